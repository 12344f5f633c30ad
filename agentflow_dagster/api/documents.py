"""/v1/documents (upload + ingest event) and /v1/search (retrieval over a collection's live index)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from agentflow_dagster import names
from agentflow_dagster.api.auth import AUTH_RESPONSES, Principal, get_ctx, require
from agentflow_dagster.api.context import ApiContext, Unavailable
from agentflow_dagster.api.errors import invalid
from agentflow_dagster.api.schemas import DocumentAccepted, Error, SearchHit, SearchResults
from agentflow_dagster.events import NAME_PATTERN, DocumentEvent
from resources.object_store import validate_key

router = APIRouter(tags=["documents"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "no such collection for this tenant"}
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "text/plain": {"schema": {"type": "string"}},
    },
}


def _claim_collection(ctx: ApiContext, collection: str, tenant: str) -> bool:
    """The first uploader owns a collection; True when `tenant` owns it."""
    with ctx.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_collections (collection, tenant) VALUES (:c, :t) ON CONFLICT DO NOTHING"
            ),
            {"c": collection, "t": tenant},
        )
        owner = conn.execute(
            sa.text("SELECT tenant FROM api_collections WHERE collection = :c"), {"c": collection}
        ).scalar_one()
    return bool(owner == tenant)


def _can_read(ctx: ApiContext, collection: str, tenant: str) -> bool:
    if collection in ctx.config.shared_collections:
        return True
    with ctx.engine.connect() as conn:
        owner = conn.execute(
            sa.text("SELECT tenant FROM api_collections WHERE collection = :c"), {"c": collection}
        ).scalar_one_or_none()
    return bool(owner == tenant)


@router.post(
    "/v1/documents",
    status_code=202,
    response_model=DocumentAccepted,
    responses={**AUTH_RESPONSES, **NOT_FOUND, 413: {"model": Error, "description": "document too large"}},
    openapi_extra={"requestBody": UPLOAD_BODY},
    summary="Upload a document to agentflow-documents/<collection>/<name> and emit its ingest event",
)
async def upload_document(
    request: Request,
    collection: str = Query(pattern=NAME_PATTERN, description="RAG collection (a dynamic partition)"),
    name: str = Query(min_length=1, max_length=512, description="object name, may contain '/'"),
    principal: Principal = Depends(require("submit")),
    ctx: ApiContext = Depends(get_ctx),
) -> DocumentAccepted:
    """The body is the raw document; its Content-Type is stored with it."""
    key = f"{collection}/{name}"
    try:
        validate_key(key)
    except ValueError as exc:
        raise invalid(("query", "name"), str(exc)) from None
    data = await request.body()
    if not data:
        raise invalid(("body",), "the document is empty")
    content_type = request.headers.get("content-type", "application/octet-stream")[:200]
    return await _store(ctx, principal, collection, key, data, content_type)


async def _store(
    ctx: ApiContext, principal: Principal, collection: str, key: str, data: bytes, content_type: str
) -> DocumentAccepted:
    def work() -> DocumentAccepted:
        if not _claim_collection(ctx, collection, principal.tenant):
            raise HTTPException(404, f"collection {collection!r} not found")
        info = ctx.objects.put(names.BUCKET_DOCUMENTS, key, data, content_type)
        event = DocumentEvent(event_id=f"doc-{uuid.uuid4().hex}", collection=collection, key=key)
        ctx.publish(names.TOPIC_DOCUMENTS, collection, event.model_dump_json().encode())
        ctx.audit(
            principal.actor,
            "document.uploaded",
            None,
            key,
            tenant=principal.tenant,
            size=info.size,
            version=info.version,
            event_id=event.event_id,
        )
        ctx.metrics.documents.inc()
        return DocumentAccepted(
            event_id=event.event_id,
            collection=collection,
            key=key,
            bucket=names.BUCKET_DOCUMENTS,
            size=info.size,
            version=info.version,
        )

    return await run_in_threadpool(work)


@router.get(
    "/v1/search",
    response_model=SearchResults,
    responses={**AUTH_RESPONSES, **NOT_FOUND},
    summary="Retrieve the top-k chunks of a collection (served from the live index while indexing runs)",
)
def search(
    q: str = Query(min_length=1, max_length=2000, description="query text"),
    collection: str = Query(pattern=NAME_PATTERN),
    k: int = Query(default=5, ge=1, le=100),
    mode: Literal["hybrid", "vector", "text"] = Query(default="hybrid"),
    principal: Principal = Depends(require("read")),
    ctx: ApiContext = Depends(get_ctx),
) -> SearchResults:
    """Hybrid (vector + full text) by default."""
    if not _can_read(ctx, collection, principal.tenant):
        raise HTTPException(404, f"collection {collection!r} not found")
    if k > ctx.config.search_max_k:
        raise invalid(("query", "k"), f"k must be <= {ctx.config.search_max_k}")
    if not q.strip():
        raise invalid(("query", "q"), "the query is blank")
    try:
        hits = ctx.retriever().search(q, collection, k, mode=mode)
    except ValueError as exc:
        raise invalid(("query", "q"), str(exc)) from None
    except Exception as exc:  # embedder or vector store down: the client should retry
        raise Unavailable(f"retrieval failed: {type(exc).__name__}") from exc
    return SearchResults(
        query=q,
        collection=collection,
        hits=[SearchHit(**h.model_dump(include=set(SearchHit.model_fields))) for h in hits],
    )
