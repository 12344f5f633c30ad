"""Kafka events through the real stack (daemon, sensors, run workers on Postgres): N in, N runs, N results."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from agentflow_dagster.events import plan_id_for
from tests.support.live_stack import LiveStack, request, traceparent, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]
WORKFLOW = "summarize_with_fallback"
N = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """One stack for the module, offline LLM provider (no OPENAI_BASE_URL)."""
    live = LiveStack.create(tmp_path_factory.mktemp("e2e") / "af")
    try:
        live.up()
        yield live
    finally:
        live.down()


def test_n_events_over_all_partitions_survive_a_daemon_kill_and_bad_input(stack: LiveStack) -> None:
    """8 events over 4 partitions, the daemon SIGKILLed mid-stream, bad events between: 8 runs, 8 results."""
    reqs = [
        request(WORKFLOW, {"document": f"Event {i}. Kafka is a log. Dagster runs ops.", "audience": "ops"},
                tenant=f"e2e_t{i % 4}")
        for i in range(N)
    ]  # fmt: skip
    ids = [r.event_id for r in reqs]
    encoded = [r.model_dump_json().encode() for r in reqs]
    started = time.monotonic()
    stack.produce([(i % 4, encoded[i], traceparent()) for i in range(4)])
    wait_until(lambda: any(stack.runs_by_event(ids[:4]).values()), 120, "the sensor to launch a first run")

    stack.kill("dagster_daemon")
    # While the daemon is down the stream goes on: the rest, replays of taken events, and bad events.
    oversized = json.dumps({"event_id": "big-1", "workflow": WORKFLOW, "inputs": {"document": "x" * 300_000}})
    bad = [
        (0, b"{not json", traceparent()),
        (1, json.dumps({"event_id": "no-workflow", "inputs": {}}).encode(), traceparent()),
        (2, request("no_such_workflow", {}).model_dump_json().encode(), traceparent()),
        (3, oversized.encode(), traceparent()),
        (0, request(WORKFLOW, {"document": "d", "colour": "red"}).model_dump_json().encode(), None),
    ]
    rest = [(i % 4, encoded[i], None if i == 5 else traceparent()) for i in range(4, N)]
    replays = [(1, encoded[0], traceparent()), (2, encoded[6], traceparent())]
    stack.produce([*rest[:2], bad[0], bad[1], replays[0], *rest[2:], bad[2], bad[3], bad[4], replays[1]])
    stack.up()

    results = stack.results(ids, timeout=300)
    elapsed = time.monotonic() - started
    runs = stack.runs_by_event(ids)
    print(f"\n{N} events, daemon killed once: all results in {elapsed:.0f}s")
    assert {e: len(r) for e, r in runs.items()} == dict.fromkeys(ids, 1), "one Dagster run per event"
    assert {e: [r.status for r in rs] for e, rs in results.items()} == {e: ["succeeded"] for e in ids}
    assert all(r[0].plan_id == plan_id_for(e) and r[0].output for e, r in results.items())
    assert stack.history(ids) == dict.fromkeys(ids, "succeeded")
    queued = stack.rows(
        "SELECT detail->>'source' AS source FROM audit_log WHERE action = 'run.queued' AND subject = ANY(:e)",
        e=ids,
    )
    assert {q.source.split("[")[1].split("]")[0] for q in queued} == {"0", "1", "2", "3"}
    duplicates = stack.rows(
        "SELECT subject FROM audit_log WHERE action = 'request.duplicate' AND subject = ANY(:e)", e=ids
    )
    # A replay is recorded as a duplicate (a re-read after the kill may add more), never run again.
    assert {ids[0], ids[6]} <= {d.subject for d in duplicates}

    letters = stack.dead_letters(len(bad), timeout=30)
    reasons = Counter(letter.reason.split(":")[0].split(" '")[0] for letter in letters)
    assert reasons == Counter(
        {
            "not JSON": 1,
            "schema violation": 1,
            "unknown workflow": 1,
            "oversized": 1,
            "inputs do not match workflow": 1,
        }
    ), [letter.reason for letter in letters]
    assert all(letter.source_topic == "agentflow.workflow.requests" for letter in letters)
