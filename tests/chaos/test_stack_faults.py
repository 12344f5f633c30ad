"""Faults injected into a real stack: run worker, broker, Redis and Postgres killed or stopped mid-stream."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import psutil
import pytest
import redis as redis_lib
from dagster._core.scheduler.instigation import InstigatorType

from agentflow_dagster.stack import services
from sensors.kafka_reader import TopicCursor
from tests.support import llm_server as script
from tests.support.live_stack import LiveStack, kill_tree, request, traceparent, wait_until
from tests.support.llm_server import LLMTestServer

pytestmark = [pytest.mark.stack, pytest.mark.slow]
WORKFLOW = "summarize_with_fallback"
SUMMARIZER = "You summarize documents faithfully"
REVIEWER = "You are a critical reviewer"


def prompt_has(text: str) -> Callable[[dict[str, Any]], bool]:
    """Matches requests whose system prompt contains `text` (which agent is calling)."""
    return lambda body: any(text in str(m.get("content", "")) for m in body.get("messages", []))


class Gate:
    """A sticky slow answer for one agent, switched on and off by the test."""

    def __init__(self, server: LLMTestServer, text: str, delay_s: float):
        self.open = False
        matches = prompt_has(text)
        server.rule(lambda body: self.open and matches(body), script.slow(delay_s))


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMTestServer]:
    with LLMTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, llm: LLMTestServer) -> Iterator[LiveStack]:
    """One stack whose run workers call the loopback LLM server (so its request count is the truth)."""
    live = LiveStack.create(
        tmp_path_factory.mktemp("chaos") / "af", OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="test-key"
    )
    try:
        live.up()
        yield live
    finally:
        live.down()


def submit(stack: LiveStack, tag: str, partitions: list[int]) -> list[str]:
    """One summarize_with_fallback event per entry of `partitions` (a tenant per partition: 4 run slots)."""
    reqs = [
        request(
            WORKFLOW, {"document": f"{tag} {i}. Redis is hot state. Postgres is warm state."}, f"{tag}_{p}"
        )
        for i, p in enumerate(partitions)
    ]
    stack.produce(
        [(p, r.model_dump_json().encode(), traceparent()) for p, r in zip(partitions, reqs, strict=True)]
    )
    return [r.event_id for r in reqs]


def assert_one_success_each(stack: LiveStack, ids: list[str], timeout: float) -> dict[str, list[Any]]:
    """Each event: exactly one result event, succeeded, and a succeeded history row."""
    results = stack.results(ids, timeout=timeout)
    assert {e: [r.status for r in rs] for e, rs in results.items()} == {e: ["succeeded"] for e in ids}
    assert stack.history(ids) == dict.fromkeys(ids, "succeeded")
    return results


def worker_calling(port: int) -> psutil.Process:
    """The run worker holding a connection to the LLM server right now (itself, or its step process)."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(c.raddr and c.raddr.port == port for c in proc.net_connections(kind="tcp")):
                cmd = " ".join(proc.cmdline())
                # Warm launcher, in-process executor: the caller is the run worker forked from the
                # forkserver (it shows the forkserver's command line; the forkserver itself never calls).
                if "multiprocessing.forkserver" in cmd:
                    return proc
                assert "spawn_main" in cmd, cmd
                parent = proc.parent()
                parent_cmd = " ".join(parent.cmdline()) if parent is not None else ""
                # Multiprocess executor: the caller is a step process whose parent is the run worker
                # (spawned by the code server, or forked from the warm launcher's forkserver).
                # In-process executor, default launcher: the caller is the run worker.
                if parent is not None and (
                    "spawn_main" in parent_cmd or "multiprocessing.forkserver" in parent_cmd
                ):
                    return parent
                return proc
    raise AssertionError(f"no process is connected to the LLM server on port {port}")


def test_run_worker_killed_mid_task_is_retried_without_repeating_llm_calls(
    stack: LiveStack, llm: LLMTestServer
) -> None:
    """SIGKILL the run worker while the 2nd task's LLM call is in flight: the retry redoes only that task."""
    gate = Gate(llm, REVIEWER, delay_s=120)
    gate.open = True
    summarize_before, review_before = llm.count(prompt_has(SUMMARIZER)), llm.count(prompt_has(REVIEWER))
    (event,) = submit(stack, "kill", [0])
    wait_until(lambda: llm.count(prompt_has(REVIEWER)) > review_before, 150, "the review call to start")
    port = int(llm.base_url.split(":")[2].split("/")[0])
    worker = worker_calling(port)
    killed_at = time.monotonic()
    kill_tree(worker.pid)
    gate.open = False

    results = assert_one_success_each(stack, [event], timeout=240)
    recovered = time.monotonic() - killed_at
    print(f"\nrun worker killed mid-task: retried run succeeded {recovered:.0f}s after the kill")
    runs = sorted(stack.runs_by_event([event])[event], key=lambda r: r.tags.get("dagster/retry_number", "0"))
    assert [r.status for r in runs] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]
    assert runs[1].tags["dagster/parent_run_id"] == runs[0].run_id
    assert results[event][0].run_id == runs[1].run_id
    # The completed task was not redone; the killed task's call was paid once more, nothing else.
    assert llm.count(prompt_has(SUMMARIZER)) - summarize_before == 1
    assert llm.count(prompt_has(REVIEWER)) - review_before == 2
    plan = results[event][0].plan_id
    calls = stack.rows(
        "SELECT task_id, count(*) AS n FROM llm_calls WHERE plan_id = :p GROUP BY task_id", p=plan
    )
    assert {c.task_id: c.n for c in calls} == {"summarize": 1, "key_points_review": 1}
    outputs = stack.rows("SELECT task_id FROM task_outputs WHERE plan_id = :p", p=plan)
    assert sorted(o.task_id for o in outputs) == ["key_points_review", "summarize"]
    attempts = stack.rows(
        "SELECT task_id, run_id, status FROM task_runs WHERE plan_id = :p ORDER BY id", p=plan
    )
    assert [(a.task_id, a.run_id, a.status) for a in attempts] == [
        ("summarize", runs[0].run_id, "succeeded"),
        ("key_points_review", runs[0].run_id, "failed"),  # closed by the failure sensor, not left running
        ("key_points_review", runs[1].run_id, "succeeded"),
    ]


def test_broker_killed_mid_stream_every_event_runs_once(stack: LiveStack) -> None:
    """Tansu SIGKILLed in the middle of a 20-event stream, restarted on its S3 log: 20 runs, 20 results."""
    first = submit(stack, "pre", [i % 4 for i in range(10)])
    stack.kill("kafka")  # while the request sensor reads them and their runs start
    stack.up()  # Tansu again on the same port and the same log in SeaweedFS
    second = submit(stack, "post", [i % 4 for i in range(10)])
    ids = first + second
    assert_one_success_each(stack, ids, timeout=900)
    runs = stack.runs_by_event(ids)
    assert {e: len(r) for e, r in runs.items()} == dict.fromkeys(ids, 1)
    # The log survived, so the cursor never had to be reset: it sits past every request produced.
    with stack.instance() as inst:
        states = inst.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        (state,) = [s for s in states if s.name == "workflow_request_sensor"]
        cursor = TopicCursor.parse(state.instigator_data.cursor)  # type: ignore[union-attr]
    assert sum(cursor.offsets.values()) >= len(ids)


def test_redis_down_tasks_run_unlocked_and_recover(stack: LiveStack) -> None:
    """redis-server stopped: tasks run without the lock (audited), nothing lost; locks return with Redis."""
    services.stop_pid(stack.pids()["redis"])
    during = submit(stack, "noredis", [1])
    assert_one_success_each(stack, during, timeout=240)
    stack.up()  # restarts redis-server on the same port (append-only file kept)
    after = submit(stack, "redis", [2])
    assert_one_success_each(stack, after, timeout=240)
    unlocked = stack.rows(
        "SELECT DISTINCT w.event_id FROM audit_log a JOIN workflow_runs w USING (plan_id) "
        "WHERE a.action = 'task.lock_unavailable' AND w.event_id = ANY(:e)",
        e=during + after,
    )
    assert sorted(u.event_id for u in unlocked) == sorted(during)
    client = redis_lib.Redis.from_url(f"redis://127.0.0.1:{stack.ports['redis']}/0")
    try:
        assert client.keys("agentflow:task-lock:*") == []  # every lock taken after the restart was released
    finally:
        client.close()


def test_postgres_restart_during_runs_loses_no_history(stack: LiveStack, llm: LLMTestServer) -> None:
    """pg_ctl stop/start while 2 runs wait on slow LLM calls: every event ends with one success."""
    gate = Gate(llm, REVIEWER, delay_s=20)
    gate.open = True
    review_before = llm.count(prompt_has(REVIEWER))
    ids = submit(stack, "pg", [1, 2])
    wait_until(
        lambda: llm.count(prompt_has(REVIEWER)) - review_before >= 2, 180, "two runs in their 2nd task"
    )
    services.stop_postgres(stack.data_dir)
    time.sleep(5)
    gate.open = False
    stack.up()  # starts Postgres again on the same port, and any component that died without it
    assert_one_success_each(stack, ids, timeout=300)
    runs = stack.runs_by_event(ids)
    assert all(r[-1].status == dg.DagsterRunStatus.SUCCESS for r in runs.values()), runs
    plans = stack.rows("SELECT plan_id FROM workflow_runs WHERE event_id = ANY(:e)", e=ids)
    outputs = stack.rows(
        "SELECT plan_id, count(*) AS n FROM task_outputs WHERE plan_id = ANY(:p) GROUP BY plan_id",
        p=[p.plan_id for p in plans],
    )
    assert sorted(o.n for o in outputs) == [2, 2]  # each task's output once per plan
