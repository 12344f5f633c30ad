"""Submit, idempotency, status, server-sent events, approvals, isolation, rate limits and budgets."""

from __future__ import annotations

import json
import threading
import time
import uuid

import sqlalchemy as sa
from fastapi.testclient import TestClient

from agentflow_dagster import names
from agentflow_dagster.api import create_app
from agentflow_dagster.api.config import ApiConfig
from agentflow_dagster.events import WorkflowRequest, plan_id_for
from agentflow_dagster.settings import Settings
from agentflow_dagster.workflows.spec import WorkflowSpec
from resources.object_store import ObjectStore
from sensors.workflow_requests import trace_id_from
from tests.api.conftest import Keys, read_topic

BODY = {"workflow": "support_triage", "inputs": {"message": "my invoice is wrong"}}


def _requests_for(kafka_bootstrap: str, event_id: str) -> list[WorkflowRequest]:
    found = []
    for rec in read_topic(kafka_bootstrap, names.TOPIC_REQUESTS):
        # The session's topic also holds other tests' events, bad ones included (sensor DLQ tests).
        try:
            req = WorkflowRequest.model_validate_json(rec.value)
        except ValueError:
            continue
        if req.event_id == event_id:
            assert trace_id_from(rec.headers["traceparent"].decode()) is not None
            found.append(req)
    return found


def _record_run(
    engine: sa.Engine, plan_id: str, event_id: str, tenant: str, status: str, workflow: str
) -> None:
    """What the sensor and the run worker write: the plan row, two attempts of one task, an output."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, trace_id, "
                "dagster_run_ids, submitted_at, started_at) VALUES (:p, :e, :w, '1.0.0', :t, :s, :tr, "
                "'[\"run-1\"]'::jsonb, now(), now()) ON CONFLICT (plan_id) DO UPDATE SET status = :s"
            ),
            {"p": plan_id, "e": event_id, "w": workflow, "t": tenant, "s": status, "tr": "ab" * 16},
        )
        conn.execute(
            sa.text(
                "INSERT INTO task_runs (plan_id, task_id, agent, run_id, attempt, status, error, "
                "input_tokens, output_tokens, cost_usd, finished_at) VALUES "
                "(:p, 'classify', 'classifier', 'run-1', 1, 'failed', 'timeout', 10, 0, 0.001, now()), "
                "(:p, 'classify', 'classifier', 'run-1', 2, 'succeeded', NULL, 100, 20, 0.002, now())"
            ),
            {"p": plan_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO task_outputs (plan_id, task_id, input_digest, agent, output, provider) VALUES "
                "(:p, 'classify', 'd1', 'classifier', '{\"category\": \"billing\"}'::jsonb, 'offline')"
            ),
            {"p": plan_id},
        )


def test_submit_publishes_one_request_with_trace_context(
    client: TestClient, keys: Keys, kafka_bootstrap: str, engine: sa.Engine
) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    r = client.post(
        "/v1/workflows", json=BODY, headers={**keys("acme"), "traceparent": f"00-{trace}-b7ad6b7169203331-01"}
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["plan_id"] == plan_id_for(body["event_id"]) and body["trace_id"] == trace
    assert r.headers["location"] == f"/v1/workflows/{body['plan_id']}"
    [req] = _requests_for(kafka_bootstrap, body["event_id"])
    assert req.tenant == "acme" and req.workflow == "support_triage"
    assert req.inputs == {"message": "my invoice is wrong", "customer_tier": "standard"}
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("SELECT actor, action FROM audit_log WHERE plan_id = :p"), {"p": body["plan_id"]}
        ).all()
    assert [a.action for a in audit] == ["request.submitted"] and audit[0].actor.startswith("key:")


def test_idempotency_key_returns_the_same_plan_and_publishes_once(
    client: TestClient, keys: Keys, kafka_bootstrap: str, redis_url: str
) -> None:
    import redis

    headers = {**keys("acme"), "Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = client.post("/v1/workflows", json=BODY, headers=headers)
    second = client.post("/v1/workflows", json=BODY, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["plan_id"] == second.json()["plan_id"]
    assert second.json()["replayed"] is True and second.headers["idempotent-replayed"] == "true"
    # Redis lost its copy (TTL, flush): Postgres still answers with the same plan.
    client_r = redis.Redis.from_url(redis_url)
    deleted = 0
    for key in client_r.scan_iter("agentflow:api:idem:acme:*"):
        deleted += client_r.delete(key)
    assert deleted >= 1
    third = client.post("/v1/workflows", json=BODY, headers=headers)
    assert third.status_code == 202 and third.json()["plan_id"] == first.json()["plan_id"]
    assert len(_requests_for(kafka_bootstrap, first.json()["event_id"])) == 1
    # Same key, other body: refused, nothing published.
    other = client.post("/v1/workflows", json={**BODY, "priority": 3}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.text
    # The same key from another tenant is another request.
    theirs = client.post(
        "/v1/workflows", json=BODY, headers={**keys("globex"), "Idempotency-Key": headers["Idempotency-Key"]}
    )
    assert theirs.status_code == 202 and theirs.json()["plan_id"] != first.json()["plan_id"]


def test_inputs_are_validated_against_the_spec(client: TestClient, keys: Keys) -> None:
    headers = keys("acme")
    cases = [
        {"workflow": "no_such_flow", "inputs": {}},
        {"workflow": "support_triage", "inputs": {}},
        {"workflow": "support_triage", "inputs": {"message": 42}},
        {"workflow": "support_triage", "inputs": {"message": "x", "surprise": 1}},
        {"workflow": "support_triage", "inputs": {"message": "x" * 8001}},
        {"workflow": "support_triage", "inputs": {"message": "x"}, "tenant": "globex"},
        {"workflow": "support_triage", "inputs": {"message": "x"}, "priority": 11},
        {"workflow": "Support-Triage'; --", "inputs": {"message": "x"}},
    ]
    for body in cases:
        r = client.post("/v1/workflows", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
        assert isinstance(r.json()["detail"], list)


def test_large_inputs_travel_by_reference(
    client: TestClient, keys: Keys, kafka_bootstrap: str, object_store: ObjectStore
) -> None:
    message = "long message " * 400  # above the test's inline_input_limit of 1 KiB
    r = client.post(
        "/v1/workflows",
        json={"workflow": "support_triage", "inputs": {"message": message}},
        headers=keys("acme"),
    )
    assert r.status_code == 202, r.text
    [req] = _requests_for(kafka_bootstrap, r.json()["event_id"])
    assert req.inputs == {} and req.inputs_ref == f"requests/{r.json()['plan_id']}.json"
    stored = json.loads(object_store.get(names.BUCKET_ARTIFACTS, req.inputs_ref))
    assert stored["message"] == message


def test_status_shows_tasks_attempts_outputs_tokens_cost_and_isolation(
    client: TestClient, keys: Keys, engine: sa.Engine
) -> None:
    acme = keys("acme")
    submitted = client.post("/v1/workflows", json=BODY, headers=acme).json()
    plan = submitted["plan_id"]
    early = client.get(f"/v1/workflows/{plan}", headers=acme)
    assert early.status_code == 200 and early.json()["status"] == "submitted" and early.json()["tasks"] == []
    _record_run(engine, plan, submitted["event_id"], "acme", "running", "support_triage")
    state = client.get(f"/v1/workflows/{plan}", headers=acme).json()
    assert state["status"] == "running" and state["runs"] == ["run-1"]
    [task] = state["tasks"]
    assert task["task_id"] == "classify" and task["status"] == "succeeded"
    assert [a["attempt"] for a in task["attempts"]] == [1, 2] and task["output"] == {"category": "billing"}
    assert state["tokens"] == {"input": 110, "output": 20, "total": 130}
    assert abs(state["cost_usd"] - 0.003) < 1e-9
    assert state["errors"] == ["classify attempt 1: timeout"]
    # Another tenant cannot tell this plan from a missing one.
    for path in (f"/v1/workflows/{plan}", f"/v1/workflows/{plan}/events"):
        theirs = client.get(path, headers=keys("globex"))
        missing = client.get(path.replace(plan, "plan-00000000000000000000"), headers=keys("globex"))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["detail"].replace(plan, "X") == missing.json()["detail"].replace(
            "plan-00000000000000000000", "X"
        )
    r = client.post(
        f"/v1/workflows/{plan}/approvals",
        json={"task_id": "draft", "decision": "approve"},
        headers=keys("globex"),
    )
    assert r.status_code == 404


def test_events_stream_until_the_workflow_finishes(client: TestClient, keys: Keys, engine: sa.Engine) -> None:
    acme = keys("acme")
    submitted = client.post("/v1/workflows", json=BODY, headers=acme).json()
    plan = submitted["plan_id"]
    _record_run(engine, plan, submitted["event_id"], "acme", "running", "support_triage")

    def finish() -> None:
        time.sleep(0.8)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE workflow_runs SET status = 'succeeded' WHERE plan_id = :p"), {"p": plan}
            )

    threading.Thread(target=finish, daemon=True).start()
    events: list[tuple[str, dict]] = []
    start = time.monotonic()
    with client.stream("GET", f"/v1/workflows/{plan}/events", headers=acme) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert time.monotonic() - start < 10
    kinds = [e[0] for e in events]
    assert kinds[:2] == ["task", "task"] and kinds[-1] == "end"
    assert [e[1]["status"] for e in events if e[0] == "status"] == ["running", "succeeded"]


def test_events_stream_is_bounded(client: TestClient, keys: Keys) -> None:
    acme = keys("acme")
    plan = client.post("/v1/workflows", json=BODY, headers=acme).json()["plan_id"]
    start = time.monotonic()
    r = client.get(f"/v1/workflows/{plan}/events", params={"timeout_s": 0.5}, headers=acme)
    assert r.status_code == 200 and time.monotonic() - start < 5
    assert "event: status" in r.text and r.text.rstrip().split("\n\n")[-1].startswith("id: ")
    assert "event: timeout" in r.text


def _approval_plan(client: TestClient, headers: dict[str, str], engine: sa.Engine, status: str) -> str:
    body = {"workflow": "approval_demo", "inputs": {"message": "ship it"}}
    submitted = client.post("/v1/workflows", json=body, headers=headers).json()
    _record_run(engine, submitted["plan_id"], submitted["event_id"], "acme", status, "approval_demo")
    return str(submitted["plan_id"])


def test_approvals_are_audited_and_published(
    client: TestClient, keys: Keys, engine: sa.Engine, kafka_bootstrap: str
) -> None:
    headers = keys("acme", "submit", "approve")
    plan = _approval_plan(client, headers, engine, "waiting_approval")
    comment = "looks fine'; DROP TABLE audit_log; --"
    r = client.post(
        f"/v1/workflows/{plan}/approvals",
        json={"task_id": "publish", "decision": "approve", "comment": comment},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    rejected = _approval_plan(client, headers, engine, "waiting_approval")
    r2 = client.post(
        f"/v1/workflows/{rejected}/approvals",
        json={"task_id": "publish", "decision": "reject", "comment": "no"},
        headers=headers,
    )
    assert r2.status_code == 202
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT plan_id, actor, action, subject, detail FROM audit_log "
                "WHERE action LIKE 'approval.%' AND plan_id IN (:a, :b) ORDER BY id"
            ),
            {"a": plan, "b": rejected},
        ).all()
    assert [(r.plan_id, r.action, r.subject) for r in rows] == [
        (plan, "approval.approve", "publish"),
        (rejected, "approval.reject", "publish"),
    ]
    assert rows[0].detail["comment"] == comment and rows[0].actor.startswith("key:")
    published = [rec.json() for rec in read_topic(kafka_bootstrap, names.TOPIC_APPROVALS)]
    mine = {p["plan_id"]: p for p in published if p.get("plan_id") in (plan, rejected)}
    assert mine[plan]["decision"] == "approve" and mine[plan]["comment"] == comment
    assert mine[rejected]["decision"] == "reject" and mine[rejected]["tenant"] == "acme"


def test_approvals_refuse_what_cannot_be_approved(client: TestClient, keys: Keys, engine: sa.Engine) -> None:
    headers = keys("acme", "submit", "approve")
    plan = _approval_plan(client, headers, engine, "waiting_approval")
    url = f"/v1/workflows/{plan}/approvals"
    assert (
        client.post(url, json={"task_id": "classify", "decision": "approve"}, headers=headers).status_code
        == 409
    )
    assert (
        client.post(url, json={"task_id": "nope", "decision": "approve"}, headers=headers).status_code == 422
    )
    assert (
        client.post(url, json={"task_id": "publish", "decision": "maybe"}, headers=headers).status_code == 422
    )
    assert (
        client.post(
            url, json={"task_id": "publish", "decision": "approve", "x": 1}, headers=headers
        ).status_code
        == 422
    )
    done = _approval_plan(client, headers, engine, "succeeded")
    r = client.post(
        f"/v1/workflows/{done}/approvals", json={"task_id": "publish", "decision": "approve"}, headers=headers
    )
    assert r.status_code == 409


def test_rate_limit_answers_429_with_retry_after(client: TestClient, keys: Keys) -> None:
    headers = keys("limited", "read")
    codes = [client.get("/v1/workflows/plan-00000000000000000000", headers=headers) for _ in range(5)]
    assert [c.status_code for c in codes[:3]] == [404, 404, 404]
    over = codes[3]
    assert over.status_code == 429 and 1 <= int(over.headers["retry-after"]) <= 60
    # Limits are per tenant: another tenant is unaffected.
    assert (
        client.get("/v1/workflows/plan-00000000000000000000", headers=keys("acme", "read")).status_code == 404
    )


def test_token_budget_answers_429_until_the_next_day(
    client: TestClient, keys: Keys, engine: sa.Engine
) -> None:
    headers = keys("broke")
    first = client.post("/v1/workflows", json=BODY, headers=headers)
    assert first.status_code == 202
    plan = first.json()["plan_id"]
    _record_run(engine, plan, first.json()["event_id"], "broke", "running", "support_triage")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO llm_calls (plan_id, provider, model, input_tokens, output_tokens, cache_hit) "
                "VALUES "
                "(:p, 'offline', 'm', 60, 30, false), (:p, 'offline', 'm', 500, 500, true)"
            ),
            {"p": plan},
        )
    assert client.post("/v1/workflows", json=BODY, headers=headers).status_code == 202  # 90 < 100
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO llm_calls (plan_id, provider, model, input_tokens, output_tokens) "
                "VALUES (:p, 'offline', 'm', 5, 5)"
            ),
            {"p": plan},
        )
    r = client.post("/v1/workflows", json=BODY, headers=headers)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 86400
    assert "budget" in r.json()["detail"]
    # Reads stay open when the budget is spent.
    assert client.get(f"/v1/workflows/{plan}", headers=headers).status_code == 200


def test_kafka_down_is_503_and_leaves_no_claim(
    api_settings: Settings, specs: dict[str, WorkflowSpec], keys: Keys, engine: sa.Engine
) -> None:
    from agentflow_dagster.stack.services import free_port

    dead = api_settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    config = ApiConfig(kafka_timeout_s=1.0, requests_per_minute=1000)
    key = f"down-{uuid.uuid4().hex}"
    with TestClient(create_app(dead, config, specs=specs)) as c:
        r = c.post("/v1/workflows", json=BODY, headers={**keys("acme"), "Idempotency-Key": key})
        assert r.status_code == 503, r.text
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["kafka"]["ok"] is False
        assert ready.json()["checks"]["postgres"]["ok"] is True
    with engine.connect() as conn:
        assert not conn.execute(
            sa.text("SELECT 1 FROM api_requests WHERE idempotency_key = :k"), {"k": key}
        ).first()


def test_submit_spans_continue_the_callers_trace(
    client: TestClient, keys: Keys, kafka_bootstrap: str
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agentflow_dagster.observability import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        headers = {**keys("acme"), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        r = client.post("/v1/workflows", json=BODY, headers=headers)
        assert r.status_code == 202 and r.json()["trace_id"] == trace
    finally:
        tracing.use_provider(None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server, send = spans["POST /v1/workflows"], spans[f"send {names.TOPIC_REQUESTS}"]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert send.parent is not None and send.parent.span_id == server.context.span_id
    assert server.attributes is not None and server.attributes["agentflow.plan_id"] == r.json()["plan_id"]
    [record] = [
        rec
        for rec in read_topic(kafka_bootstrap, names.TOPIC_REQUESTS)
        if rec.json().get("event_id") == r.json()["event_id"]
    ]
    assert record.headers["traceparent"].decode() == f"00-{trace}-{send.context.span_id:016x}-01"
