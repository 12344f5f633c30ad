"""On the stack: the run worker is SIGKILLed after a side-effecting tool ran; the retried run reuses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.test_stack_faults import worker_calling
from tests.support import llm_server as script
from tests.support.live_stack import LiveStack, kill_tree, request, traceparent, wait_until
from tests.support.llm_server import LLMTestServer
from tests.tools.project import write_project
from tests.tools.test_tools_in_job import has_tool_results, log_lines

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tool-log") / "tool_calls.log"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMTestServer]:
    with LLMTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, llm: LLMTestServer, log: Path) -> Iterator[LiveStack]:
    project = write_project(tmp_path_factory.mktemp("project") / "shop", log)
    live = LiveStack.create(
        tmp_path_factory.mktemp("tools-stack") / "af",
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="test-key",
        AGENTFLOW_PROJECT_DIR=str(project),
        AGENTFLOW_TEST_TOOL_LOG=str(log),
    )
    try:
        live.up()
        yield live
    finally:
        live.down()


def test_run_worker_killed_after_a_side_effect_does_not_repeat_it(
    stack: LiveStack, llm: LLMTestServer, log: Path
) -> None:
    stalled = {"on": True}
    llm.rule(lambda body: stalled["on"] and has_tool_results(body), script.slow(240))
    llm.rule(
        lambda body: not has_tool_results(body),
        script.tool_calls(("place_order", {"sku": "A-1", "units": 5})),
    )
    req = request("restock", {"request": "Order 5 units of A-1."}, "t_kill")
    stack.produce([(0, req.model_dump_json().encode(), traceparent())])
    wait_until(lambda: llm.count(has_tool_results) >= 1, 240, "the model to be sent the tool's result")
    assert len(log_lines(log, "place_order")) == 1
    port = int(llm.base_url.split(":")[2].split("/")[0])
    kill_tree(worker_calling(port).pid)
    stalled["on"] = False

    results = stack.results([req.event_id], timeout=300)
    assert [r.status for r in results[req.event_id]] == ["succeeded"]
    runs = stack.runs_by_event([req.event_id])[req.event_id]
    assert len(runs) == 2  # the killed run and its retry from failure
    # The tool's own log: one order, though the task ran twice and the model asked twice.
    assert len(log_lines(log, "place_order")) == 1
    assert llm.count(lambda b: not has_tool_results(b)) == 2
    plan = results[req.event_id][0].plan_id
    rows = stack.rows("SELECT status, run_id FROM tool_calls WHERE plan_id = :p", p=plan)
    assert [r.status for r in rows] == ["ok"]
    print(f"\nworker killed after place_order: retried run {results[req.event_id][0].run_id} reused it")
