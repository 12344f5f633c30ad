"""`agentflow audit PLAN_ID`: one workflow's lineage, from the request event to the documents it read."""

from __future__ import annotations

import functools
import html
import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from agentflow_dagster import clients, names
from agentflow_dagster.commands.dagster_runs import read_runs, run_storage_url
from agentflow_dagster.commands.observability import _postgres_url, load_activity, render_activity
from agentflow_dagster.db import make_engine
from agentflow_dagster.observability.timeline import _rows, load_timeline, usd
from agentflow_dagster.settings import get_settings

# How the agent runner delimits retrieved passages in a prompt (agents/runner.render_untrusted).
_PASSAGE = re.compile(r'<untrusted_document id="([^"]*)" source="([^"]*)">')
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Audit actions that mark a request reaching the platform, by path.
_ARRIVALS = ("request.submitted", "request.launched", "run.queued", "workflow.running")
# (run ids, plan id) -> the plan's Dagster runs, or None when the run storage cannot be read.
RunReader = Callable[[list[str], str], list[dict[str, Any]] | None]


def _request(
    wf: dict[str, Any] | None, api: dict[str, Any] | None, log: list[dict[str, Any]]
) -> dict[str, Any]:
    """The request event: ids from the plan's row (or the gateway's), received = its first arrival entry."""
    base = wf or api or {}
    arrival = next((e for e in log if e["action"] in _ARRIVALS), None)
    detail = arrival["detail"] if arrival else {}
    return {
        "event_id": base.get("event_id") or (arrival["subject"] if arrival else None),
        "plan_id": base.get("plan_id"),
        "workflow": base.get("workflow") or detail.get("workflow"),
        "version": base.get("version") or detail.get("version"),
        "tenant": base.get("tenant") or detail.get("tenant"),
        "trace_id": base.get("trace_id") or detail.get("trace_id"),
        "submitted_at": base.get("submitted_at"),
        "received_at": arrival["at"] if arrival else None,
        "received_by": arrival["actor"] if arrival else None,
        "received_via": _path_of(arrival),
        "idempotency_key_used": api.get("idempotency_key_used") if api else None,
    }


def _path_of(arrival: dict[str, Any] | None) -> str | None:
    if arrival is None:
        return None
    detail = arrival["detail"]
    if arrival["action"] == "run.queued":
        return f"kafka {detail.get('source', names.TOPIC_REQUESTS)}"
    if arrival["action"] == "request.submitted":
        return "http api"
    return str(detail.get("path") or "run config (launched without a request sensor)")


def _dagster_runs(run_ids: list[str], plan_id: str, runs: RunReader | None) -> list[dict[str, Any]]:
    """The plan's Dagster runs (tagged with it, or named by its history rows), oldest first."""
    found = runs(run_ids, plan_id) if runs is not None else None
    if found is None:
        return [{"run_id": r, "status": None} for r in run_ids]
    known = {r["run_id"] for r in found}
    # A run the history names but this instance does not know (another instance, or deleted).
    return found + [
        {"run_id": r, "status": None, "note": "not in this Dagster instance"}
        for r in run_ids
        if r not in known
    ]


def _strings(value: Any) -> list[str]:
    """Every string inside a stored prompt (a list of chat messages, or any JSON)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


def _prompt_of(row: dict[str, Any], store: Any) -> Any:
    if row["prompt"] is not None or not row["prompt_ref"] or store is None:
        return row["prompt"]
    from ops.compiler import split_ref

    try:
        return json.loads(store.get(*split_ref(row["prompt_ref"])))
    except Exception:  # a missing or unreadable object: the passages are then unknown, not an error
        return None


def _has_table(conn: sa.Connection, name: str) -> bool:
    return conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": name}).scalar() is not None


def _retrieval(conn: sa.Connection, plan_id: str, calls: list[dict[str, Any]], store: Any) -> dict[str, Any]:
    """What the plan's tasks retrieved: its `retrievals` rows; for plans recorded before them, its prompts."""
    if _has_table(conn, "retrievals"):
        searches = _rows(
            conn,
            "SELECT id, task_id, run_id, trace_id, span_id, created_at, collection, query, content_mode, k, "
            "mode, backend, index_name, embedding_model, latency_ms, hits, error FROM retrievals "
            "WHERE plan_id = :p ORDER BY created_at, id",
            p=plan_id,
        )
        if searches:
            return _recorded_retrieval(conn, searches)
    return _retrieval_from_prompts(conn, plan_id, calls, store)


def _recorded_retrieval(conn: sa.Connection, searches: list[dict[str, Any]]) -> dict[str, Any]:
    """Chunks, documents and the physical indexes searched, as each search recorded them."""
    live = (
        {
            r["collection"]: r
            for r in _rows(conn, "SELECT collection, table_name, dim FROM rag_vector_indexes")
        }
        if _has_table(conn, "rag_vector_indexes")
        else {}
    )
    chunks: list[dict[str, Any]] = []
    indexes: dict[tuple[str, str], dict[str, Any]] = {}
    for s in searches:
        for h in s["hits"]:
            chunks.append(
                {
                    "task_id": s["task_id"],
                    "retrieval_id": s["id"],
                    "collection": s["collection"],
                    "index": h.get("index") or s["index_name"],
                    **{k: h.get(k) for k in ("chunk_id", "document", "version", "ordinal", "start", "end")},
                    "score": h.get("score"),
                }
            )
        for name in dict.fromkeys([s["index_name"], *(h.get("index") for h in s["hits"])]):
            if not name:
                continue
            entry = indexes.setdefault(
                (s["collection"], name),
                {
                    "collection": s["collection"],
                    "index": name,
                    "backend": s["backend"],
                    "model": s["embedding_model"],
                    "searches": 0,
                    "first_searched_at": s["created_at"],
                    "status": _index_status(s["backend"], name, live.get(s["collection"])),
                },
            )
            entry["searches"] += 1
            if entry["status"] == "live" and live.get(s["collection"]):
                entry["dim"] = live[s["collection"]]["dim"]
    documents = sorted(
        {(c["collection"], c["document"], c["version"]) for c in chunks if c["document"]},
        key=lambda d: tuple(str(x) for x in d),
    )
    return {
        "source": "retrievals",
        "searches": searches,
        "chunks": chunks,
        "documents": [{"collection": c, "document": d, "version": v} for c, d, v in documents],
        "indexes": list(indexes.values()),
        "calls_without_prompt": 0,
    }


def _index_status(backend: str | None, name: str, live: dict[str, Any] | None) -> str:
    """`live` (still behind the alias), `replaced` (rebuilt since) or `unknown` (not a pgvector index)."""
    if backend != "pgvector":
        return "unknown"
    return "live" if live and live["table_name"] == name else "replaced"


def _retrieval_from_prompts(
    conn: sa.Connection, plan_id: str, calls: list[dict[str, Any]], store: Any
) -> dict[str, Any]:
    """Plans recorded before `retrievals`: chunk ids parsed from prompts, the index guessed by build time."""
    prompts = _rows(
        conn, "SELECT id, task_id, prompt, prompt_ref FROM llm_calls WHERE plan_id = :p", p=plan_id
    )
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    without = 0
    for row in prompts:
        prompt = _prompt_of(row, store)
        if prompt is None:
            without += 1
            continue
        for chunk_id, source in _PASSAGE.findall("\n".join(_strings(prompt))):
            key = (row["task_id"], html.unescape(chunk_id))
            seen.setdefault(key, {"task_id": key[0], "chunk_id": key[1], "source": html.unescape(source)})
    chunks = list(seen.values())
    ids = sorted({c["chunk_id"] for c in chunks})
    first_call = min((c["created_at"] for c in calls), default=None)
    indexes = _live_indexes(conn, first_call)
    where: dict[str, dict[str, Any]] = {}
    for index in indexes:
        if ids and _IDENT.match(index["view"]):
            for row in _rows(
                conn,
                f"SELECT chunk_id, document, version, ordinal FROM {index['view']} "
                "WHERE chunk_id = ANY(:ids)",
                ids=ids,
            ):
                where.setdefault(
                    row["chunk_id"], {**row, "collection": index["collection"], "index": index["index"]}
                )
    missing = [i for i in ids if i not in where]
    if missing:
        # Chunks no longer in a live index (re-indexed since) are still in the chunk table.
        for row in _rows(
            conn,
            "SELECT chunk_id, document, version, ordinal, collection FROM rag_chunks "
            "WHERE chunk_id = ANY(:ids)",
            ids=missing,
        ):
            where.setdefault(row["chunk_id"], {**row, "index": None})
    for c in chunks:
        found = where.get(c["chunk_id"], {})
        c.update({k: found.get(k) for k in ("collection", "document", "version", "ordinal", "index")})
    documents = sorted(
        {(c["collection"], c["document"], c["version"]) for c in chunks if c["document"]},
        key=lambda d: tuple(str(x) for x in d),
    )
    used = {c["collection"] for c in chunks}
    return {
        "source": "prompts",
        "searches": [],
        "chunks": chunks,
        "documents": [{"collection": c, "document": d, "version": v} for c, d, v in documents],
        "indexes": [i for i in indexes if i["collection"] in used],
        "calls_without_prompt": without,
    }


def _live_indexes(conn: sa.Connection, first_call: str | None) -> list[dict[str, Any]]:
    """Each collection's live pgvector index; whether it was already live when the plan's first call ran."""
    if not _has_table(conn, "rag_vector_indexes"):
        return []
    rows = _rows(
        conn,
        "SELECT collection, view_name AS view, table_name AS index, model, dim, built_at "
        "FROM rag_vector_indexes",
    )
    for row in rows:
        # The alias swaps atomically: an index built before the plan's first call is the one it searched.
        built = datetime.fromisoformat(row["built_at"])
        row["live_at_retrieval"] = bool(first_call and built <= datetime.fromisoformat(first_call))
    return rows


def load_audit(
    engine: sa.Engine, plan_id: str, *, runs: RunReader | None = None, store: Any = None
) -> dict[str, Any] | None:
    """Everything recorded about one plan, as JSON-ready data (None when nothing is)."""
    timeline = load_timeline(engine, plan_id)
    with engine.connect() as conn:
        log = _rows(
            conn,
            "SELECT id, at, actor, action, subject, detail FROM audit_log WHERE plan_id = :p ORDER BY at, id",
            p=plan_id,
        )
        api = next(
            iter(
                _rows(
                    conn,
                    "SELECT event_id, plan_id, tenant, workflow, trace_id, idempotency_key IS NOT NULL AS "
                    "idempotency_key_used, created_at AS submitted_at FROM api_requests WHERE plan_id = :p",
                    p=plan_id,
                )
            ),
            None,
        )
        if timeline is None and api is None and not log:
            return None
        wf = timeline["workflow"] if timeline else None
        request = _request(wf, api, log)
        spec = next(
            iter(
                _rows(
                    conn,
                    "SELECT name, version, spec_hash, description, source_file, registered_at "
                    "FROM workflow_definitions WHERE name = :n AND version = :v",
                    n=request["workflow"],
                    v=request["version"],
                )
            ),
            None,
        )
        calls = timeline["llm_calls"] if timeline else []
        retrieval = _retrieval(conn, plan_id, calls, store)
    tasks = timeline["tasks"] if timeline else []
    run_ids = list(dict.fromkeys([*(wf["dagster_run_ids"] if wf else []), *(t["run_id"] for t in tasks)]))
    return {
        "plan_id": plan_id,
        "status": wf["status"] if wf else "submitted",
        "error": wf["error"] if wf else None,
        "request": request,
        "spec": spec,
        "dagster_runs": _dagster_runs(run_ids, plan_id, runs),
        "tasks": tasks,
        "approvals": [e for e in log if e["action"].startswith("approval.")],
        "llm_calls": calls,
        "retrieval": retrieval,
        "tool_calls": load_activity(engine, plan_id)["tool_calls"],
        "totals": timeline["totals"] if timeline else {},
        "audit_log": log,
    }


def render_audit(doc: dict[str, Any]) -> str:
    """The lineage as text, one section per layer."""
    r = doc["request"]
    lines = [
        f"plan {doc['plan_id']}  status {doc['status']}"
        + (f"  error: {doc['error'][:300]}" if doc["error"] else ""),
        "request",
        f"  event {r['event_id']}  workflow {r['workflow']} {r['version']}  tenant {r['tenant']}  "
        f"trace {r['trace_id'] or '-'}",
        f"  submitted {r['submitted_at'] or '-'}  received {r['received_at'] or '-'} "
        f"by {r['received_by'] or '-'} via {r['received_via'] or '-'}",
    ]
    s = doc["spec"]
    lines.append("spec")
    lines.append(
        f"  {s['name']} {s['version']}  hash {s['spec_hash']}  registered {s['registered_at']}"
        + (f"  from {s['source_file']}" if s["source_file"] else "")
        if s
        else "  (not registered: no run of this plan started)"
    )
    lines.append("dagster runs")
    for run in doc["dagster_runs"]:
        tags = {k: v for k, v in (run.get("tags") or {}).items() if not k.startswith("dagster/")}
        lines.append(
            f"  {run['run_id']}  {run['status'] or 'unknown'}"
            + (f"  parent {run['parent_run_id']}" if run.get("parent_run_id") else "")
            + (f"  {run['note']}" if run.get("note") else "")
        )
        lines += [f"      {k}={v}" for k, v in sorted(tags.items())]
    lines.append("tasks")
    for t in doc["tasks"]:
        lines.append(
            f"  {t['task_id']} attempt {t['attempt']} {t['status']}{' reused' if t['reused'] else ''}  "
            f"agent {t['agent']}  run {t['run_id']}  tokens {t['input_tokens']}/{t['output_tokens']}  "
            f"cost ${float(t['cost_usd'] or 0):.6f}" + (f"  error: {t['error'][:200]}" if t["error"] else "")
        )
    lines.append("approvals")
    lines += [
        f"  {a['at']}  {a['action']} {a['subject']} by {a['actor']}"
        + (f": {a['detail']['comment']}" if a["detail"].get("comment") else "")
        for a in doc["approvals"]
    ] or ["  (none)"]
    lines.append("llm calls")
    for c in doc["llm_calls"]:
        ev = c["evaluation"] or {}
        score = " ".join(
            f"{k}={v}" for k, v in ev.items() if k in ("schema_valid", "groundedness", "answer_relevance")
        )
        refs = " ".join(f"{k}={c[k]}" for k in ("prompt_ref", "response_ref") if c[k])
        lines.append(
            f"  {c['created_at']}  {c['provider']}/{c['model']}  task {c['task_id']} attempt {c['attempt']}  "
            f"tokens {c['input_tokens']}/{c['output_tokens']}  {c['latency_ms'] or 0:.0f}ms"
            f"  cost {usd(c['cost_usd'])}{' cache-hit' if c['cache_hit'] else ''}"
            + (f"  eval {score}" if score else "")
            + (f"  {refs}" if refs else "")
            + (f"  error: {c['error'][:160]}" if c["error"] else "")
        )
    lines += _render_retrieval(doc["retrieval"])
    lines += render_activity({"retrievals": [], "tool_calls": doc["tool_calls"]}).splitlines()[1:]
    lines.append("audit log")
    for e in doc["audit_log"]:
        detail = json.dumps(e["detail"], sort_keys=True, default=str)
        lines.append(f"  {e['at']}  {e['actor']}  {e['action']}  {e['subject']}  {detail[:240]}")
    return "\n".join(lines)


_STATUS = {"live": "still live", "replaced": "replaced since", "unknown": "live state not checked"}


def _render_retrieval(rv: dict[str, Any]) -> list[str]:
    """Each search with its hits, then the documents and indexes they came from."""
    lines = ["retrievals"]
    for s in rv["searches"]:
        query = "(not stored)" if s["query"] is None else json.dumps(s["query"][:120], ensure_ascii=False)
        lines.append(
            f"  {s['created_at']}  task {s['task_id']}  run {s['run_id']}  {s['collection']} k={s['k']} "
            f"{s['mode'] or '-'} -> {s['index_name'] or '?'}  {len(s['hits'])} hits  "
            f"{s['latency_ms'] or 0:.0f}ms  query {query}"
            + (f"  error: {s['error'][:160]}" if s["error"] else "")
        )
        lines += [
            f"      {h.get('document')} version {h.get('version')}  chunk {h.get('chunk_id')} "
            f"[{h.get('start')}:{h.get('end')}]  score {float(h.get('score') or 0):.4f}"
            for h in s["hits"]
        ]
    if rv["source"] == "prompts":
        lines.append("  (recorded before retrieval records: passages parsed from the stored prompts)")
    elif not rv["searches"]:
        lines.append("  (none)")
    lines.append("documents and indexes")
    for d in rv["documents"]:
        lines.append(f"  {d['collection']}/{d['document']} version {d['version']}")
    for i in rv["indexes"]:
        if rv["source"] == "retrievals":
            when = f"searched {i['searches']}x, {_STATUS[i['status']]}"
            lines.append(f"  index {i['collection']} -> {i['index']} ({i['backend']}, {i['model']}, {when})")
            continue
        when = (
            "live at retrieval, guessed from build time"
            if i["live_at_retrieval"]
            else "built after this plan's calls (replaced since)"
        )
        lines.append(f"  index {i['collection']} -> {i['index']} ({i['model']}, dim {i['dim']}, {when})")
    unresolved = [c["chunk_id"] for c in rv["chunks"] if not c["document"]]
    if unresolved:
        lines.append(f"  chunks without a document: {', '.join(unresolved)}")
    if not rv["chunks"]:
        lines.append("  (no retrieved passages recorded)")
    if rv["calls_without_prompt"]:
        lines.append(f"  {rv['calls_without_prompt']} LLM calls stored no prompt: their passages are unknown")
    return lines


def _run_reader(postgres_url: str, notes: list[str]) -> RunReader | None:
    """Reads the stack's Dagster runs ($DAGSTER_HOME, else $AGENTFLOW_DATA_DIR/dagster_home) from its run
    storage; why not goes to `notes` (run statuses are then unknown, not an error)."""
    home = Path(os.environ.get("DAGSTER_HOME") or str(get_settings().data_path / "dagster_home"))
    if not (home / "dagster.yaml").exists():
        notes.append(f"no Dagster instance at {home} (set DAGSTER_HOME): run statuses unknown")
        return None
    # The repo's dagster.yaml reads its storage URL from here (psycopg2 dialect, as `agentflow up` sets it).
    os.environ.setdefault(
        "AGENTFLOW_DAGSTER_POSTGRES_URL", postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    )

    def read(run_ids: list[str], plan_id: str) -> list[dict[str, Any]] | None:
        try:
            return read_runs(run_storage_url(home), run_ids, plan_id)
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            notes.append(f"Dagster instance at {home} unavailable ({msg}): run statuses unknown")
            return None

    return read


class _StoreOnFirstRead:
    """The object store, built when an offloaded prompt is first read: most audits read none (and then
    need neither the S3 client's import nor the keys)."""

    @functools.cached_property
    def _store(self) -> Any:
        return clients.object_store(get_settings())

    def get(self, bucket: str, key: str) -> bytes:
        # Raising here (no keys, server down) lists the prompt by reference only, as `_prompt_of` does.
        return bytes(self._store.get(bucket, key))


@click.command("audit")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True, help="print the lineage as JSON")
def audit(plan_id: str, as_json: bool) -> None:
    """Print PLAN_ID's lineage: request, spec, runs, tasks, approvals, LLM calls, documents, audit log."""
    url = _postgres_url()
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    engine = make_engine(url)
    notes: list[str] = []
    try:
        doc = load_audit(engine, plan_id, runs=_run_reader(url, notes), store=_StoreOnFirstRead())
    except sa.exc.OperationalError as exc:
        raise click.ClickException(f"Postgres at {shown} unreachable: {exc.orig}") from exc
    finally:
        engine.dispose()
    note = notes[0] if notes else None
    if doc is None:
        raise click.ClickException(
            f"no workflow with plan_id {plan_id!r} in {shown} (plan ids look like plan-<20 hex>, "
            "as printed by `agentflow submit`)"
        )
    if note:
        doc["note"] = note
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    click.echo(render_audit(doc))
    if note:
        click.echo(f"note: {note}", err=True)
