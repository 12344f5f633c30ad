"""A small user project with a side-effecting Python tool and an MCP stdio server, for the tool tests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

# The MCP server a project declares: written by the test, run by the SDK over stdio.
MCP_SERVER = '''
"""A stdio MCP server: `lookup_stock` reads, `reserve_stock` writes (it appends to the log file)."""
import os, sys
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("warehouse")
LOG = sys.argv[1]


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def lookup_stock(sku: str) -> dict:
    """How many units of a product the warehouse holds."""
    return {"sku": sku, "units": 7 if sku == "A-1" else 0}


@server.tool()
def reserve_stock(sku: str, units: int, idempotency_key: str = "") -> str:
    """Reserve units of a product for an order."""
    with open(LOG, "a") as fh:
        fh.write(f"reserve {sku} {units} {idempotency_key}\\n")
    return f"reserved {units} x {sku}"


if __name__ == "__main__":
    if len(sys.argv) > 2:  # a port: streamable HTTP on loopback
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
'''

TOOLS = '''
"""The project's Python tools."""
import os
from agentflow_dagster.tools import tool


@tool(side_effects="external")
def place_order(sku: str, units: int, idempotency_key: str) -> dict:
    """Place an order with the supplier (an outside system: it must happen once).

    Args:
        sku: the product
        units: how many
    """
    with open(os.environ["AGENTFLOW_TEST_TOOL_LOG"], "a") as fh:
        fh.write(f"place_order {sku} {units} {idempotency_key}\\n")
    return {"order": f"PO-{sku}-{units}", "idempotency_key": idempotency_key}


@tool(requires_approval=True)
def refund(order: str, amount_eur: float) -> str:
    """Refund an order (a human approves each refund)."""
    with open(os.environ["AGENTFLOW_TEST_TOOL_LOG"], "a") as fh:
        fh.write(f"refund {order} {amount_eur}\\n")
    return "refunded"
'''

AGENT = """
name: buyer
system: You buy stock for the shop. Use the tools to check stock and place orders.
output_schema:
  type: object
  properties:
    answer: {type: string, minLength: 1}
  required: [answer]
tools: [place_order, lookup_stock, reserve_stock, refund]
max_tool_rounds: 3
"""

WORKFLOW = """
name: restock
version: "1.0.0"
description: One buyer task that may call tools.
inputs:
  request: {type: string, required: true, max_length: 2000}
outputs: [buy]
tasks:
  - task_id: buy
    agent: buyer
    inputs: {request: $request.request}
    retry: {max_retries: 1, delay_s: 1}
    timeout_s: 60
"""


def write_project(root: Path, log: Path) -> Path:
    """The project folder: agentflow.yaml with the MCP server, one agent, one workflow, tools/orders.py."""
    for sub in ("agents", "tools", "workflows", "prompts"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    server = root / "warehouse_mcp.py"
    server.write_text(textwrap.dedent(MCP_SERVER))  # stdio here; tests/tools/test_mcp_http.py runs it on HTTP
    (root / "agentflow.yaml").write_text(
        textwrap.dedent(
            f"""
            name: tool_test_project
            models: {{default: test-model}}
            mcp_servers:
              - name: warehouse
                command: [{sys.executable!r}, {str(server)!r}, {str(log)!r}]
                timeout_s: 30
            """
        )
    )
    (root / "agents" / "buyer.yaml").write_text(textwrap.dedent(AGENT))
    (root / "workflows" / "restock.yaml").write_text(textwrap.dedent(WORKFLOW))
    (root / "tools" / "orders.py").write_text(textwrap.dedent(TOOLS))
    return root
