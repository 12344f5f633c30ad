"""A project made by `agentflow init`, with a Python tool and an MCP tool, run through Kafka on the stack."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow_dagster.project.scaffold import init_project
from tests.support.live_stack import LiveStack
from tests.support.llm_server import LLMTestServer, tool_calls

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MCP_SERVER = '''
"""A warehouse MCP server (stdio); every call appends to a counter file beside it."""
from pathlib import Path

from mcp.server.mcpserver import MCPServer

COUNTER = Path(__file__).with_name("stock_calls.txt")
server = MCPServer("warehouse")


@server.tool()
def stock_level(sku: str) -> int:
    """Units in stock for a SKU."""
    with COUNTER.open("a") as f:
        f.write(sku + "\\n")
    return 7


if __name__ == "__main__":
    server.run()
'''


def offered(body: dict[str, Any], name: str) -> bool:
    return any(t.get("function", {}).get("name") == name for t in body.get("tools") or [])


def answered_tools(body: dict[str, Any]) -> bool:
    return any(m.get("role") == "tool" for m in body.get("messages", []))


def system_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user") / "shop"
    init_project(root)
    (root / "mcp_server.py").write_text(MCP_SERVER)
    config = root / "agentflow.yaml"
    config.write_text(
        config.read_text().replace(
            "mcp_servers: []",
            f"mcp_servers:\n  - name: warehouse\n    command: [{sys.executable}, {root / 'mcp_server.py'}]",
        )
    )
    triager = root / "agents" / "triager.yaml"
    triager.write_text(
        triager.read_text().replace("tools: [lookup_order]", "tools: [lookup_order, stock_level]")
    )
    return root


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMTestServer]:
    with LLMTestServer() as server:
        # The triager asks for both its tools once; the responder files one follow-up; then JSON answers.
        server.rule(
            lambda b: offered(b, "lookup_order") and not answered_tools(b),
            tool_calls(("lookup_order", {"order_id": "A-1002"}), ("stock_level", {"sku": "SKU-9"})),
        )
        server.rule(
            lambda b: offered(b, "notify_team") and not answered_tools(b),
            tool_calls(("notify_team", {"summary": "customer asks where order A-1002 is"})),
        )
        yield server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, project: Path, llm: LLMTestServer) -> Iterator[LiveStack]:
    stack = LiveStack.create(
        tmp_path_factory.mktemp("project-stack") / "af",
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="sk-test-not-a-real-key",
        AGENTFLOW_PROJECT_DIR=str(project),
    )
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def submit(live: LiveStack, message: str) -> dict[str, Any]:
    done = live.cli(
        "submit", "customer_request", "--input", f"message={message}", "--wait", "--timeout", "300",
        timeout=360,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    plan_id = next(w.split("=", 1)[1] for w in done.stdout.split() if w.startswith("plan_id="))
    return {"plan_id": plan_id, "stdout": done.stdout}


def test_a_user_project_runs_its_own_agents_and_tools(
    live: LiveStack, project: Path, llm: LLMTestServer
) -> None:
    run = submit(live, "Where is my order A-1002? Is SKU-9 in stock?")
    plan_id = run["plan_id"]
    assert "succeeded" in run["stdout"]
    rows = live.rows(
        "SELECT task_id, tool, status, side_effects FROM tool_calls WHERE plan_id = :p ORDER BY id", p=plan_id
    )
    assert {(r.task_id, r.tool, r.status) for r in rows} == {
        ("triage", "lookup_order", "ok"),
        ("triage", "stock_level", "ok"),
        ("respond", "notify_team", "ok"),
    }
    # Each side effect happened once: the MCP server's and the Python tool's own records.
    assert (project / "stock_calls.txt").read_text().split() == ["SKU-9"]
    outbox = [json.loads(line) for line in (project / "outbox.jsonl").read_text().splitlines()]
    assert len(outbox) == 1 and outbox[0]["idempotency_key"]
    # The model saw the tool results (as tool messages), and only the tools on each agent's allow-list.
    triage_calls = [b for b in llm.requests if offered(b, "lookup_order")]
    assert {t["function"]["name"] for t in triage_calls[0]["tools"]} == {"lookup_order", "stock_level"}
    assert any(answered_tools(b) for b in triage_calls)
    assert all(not offered(b, "lookup_order") for b in llm.requests if offered(b, "notify_team"))
    # Lineage: the audit lists the tool calls; the spans file has execute_tool spans.
    audit = live.cli("audit", plan_id, "--json")
    assert audit.returncode == 0, audit.stderr
    audited = json.loads(audit.stdout)["tool_calls"]
    assert sorted(c["tool"] for c in audited) == ["lookup_order", "notify_team", "stock_level"]
    trace = live.cli("trace", plan_id)
    assert trace.returncode == 0 and "tool lookup_order ok" in trace.stdout, trace.stdout + trace.stderr
    spans = (live.data_dir / "traces" / "spans.jsonl").read_text()
    assert "execute_tool lookup_order" in spans and "execute_tool stock_level" in spans


def test_an_edited_prompt_reaches_the_next_run_after_reload(
    live: LiveStack, project: Path, llm: LLMTestServer
) -> None:
    triager = project / "agents" / "triager.yaml"
    triager.write_text(
        triager.read_text().replace("You triage customer requests", "MARKER-7 You triage requests")
    )
    reloaded = live.cli("reload", timeout=300)
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert "reloaded project shop" in reloaded.stdout
    before = len(llm.requests)
    submit(live, "Where is my order A-1003?")
    assert any("MARKER-7" in system_text(b) for b in llm.requests[before:])
