"""An MCP server over streamable HTTP (the `url:` form of agentflow.yaml), on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentflow_dagster.stack import services
from agentflow_dagster.tools.decorator import ToolArgumentError
from agentflow_dagster.tools.mcp import McpServerConfig, list_server_tools
from agentflow_dagster.tools.mcp_sessions import SESSIONS
from tests.support.live_stack import kill_tree, wait_until
from tests.tools.project import MCP_SERVER


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def http_server(tmp_path: Path, tool_log: Path) -> Iterator[str]:
    script = tmp_path / "warehouse_mcp.py"
    script.write_text(textwrap.dedent(MCP_SERVER))
    port = services.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tool_log), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _accepts(port), 120, f"the MCP HTTP server on port {port}", interval=0.5)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        SESSIONS.close()
        kill_tree(proc.pid)


def test_tools_of_an_http_server_are_listed_validated_and_called(http_server: str, tool_log: Path) -> None:
    tools = {t.name: t for t in list_server_tools(McpServerConfig(name="warehouse", url=http_server))}
    assert sorted(tools) == ["lookup_stock", "reserve_stock"]
    lookup, reserve = tools["lookup_stock"], tools["reserve_stock"]
    assert (lookup.side_effects, reserve.side_effects) == ("none", "external")
    assert lookup.source.startswith(f"mcp:warehouse ({http_server})")
    with pytest.raises(ToolArgumentError, match="sku"):
        lookup.validate({"sku": 17})
    assert lookup.invoke(lookup.validate({"sku": "A-1"}), None, 30) == {"sku": "A-1", "units": 7}
    assert reserve.invoke(reserve.validate({"sku": "A-1", "units": 2}), "af-key-1", 30) == {
        "result": "reserved 2 x A-1"
    }
    assert tool_log.read_text().splitlines() == ["reserve A-1 2 af-key-1"]
