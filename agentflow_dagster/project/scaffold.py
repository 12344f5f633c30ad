"""`agentflow init DIR`: a small project a team owns, that runs as it is (offline or on a real model)."""

from __future__ import annotations

from pathlib import Path

FILES: dict[str, str] = {
    "agentflow.yaml": """\
# Your agentflow project (formats: docs/projects.md in the agentflow-dagster repository).
name: {name}
description: A starter project - replace the agents, tools and workflows with your own.
# The model agents use unless they name their own (AGENTFLOW_MODEL overrides it). Used only when an
# endpoint is configured: OPENAI_API_KEY (api.openai.com) and/or OPENAI_BASE_URL (any OpenAI-compatible
# server: vLLM, Ollama, llama.cpp, LiteLLM). Without either, the offline provider answers, labelled.
model: gpt-4o-mini
models:
  default: gpt-4o-mini
  fast: gpt-4o-mini
# MCP servers whose tools agents may use (stdio `command` or streamable HTTP `url`):
# mcp_servers:
#   - name: files
#     command: [python, -m, my_mcp_server]
mcp_servers: []
settings:
  outbox: outbox.jsonl
""",
    "agents/triager.yaml": """\
name: triager
description: Sorts a customer request and looks up the order it mentions.
system: >-
  You triage customer requests for an online shop. Decide the category, look up the order the
  customer mentions with the lookup_order tool when there is an order id, and summarise the request
  in one sentence for the support team.
prompt_file: triager.txt
output_schema:
  type: object
  required: [category, summary]
  properties:
    category: {{type: string, enum: [order, billing, product, other]}}
    summary: {{type: string, minLength: 1, maxLength: 400}}
    order_status: {{type: [string, "null"], description: status from lookup_order, if any}}
model:
  profile: fast
  temperature: 0
  max_tokens: 512
tools: [lookup_order]
max_tool_rounds: 3
""",
    "agents/responder.yaml": """\
name: responder
description: Writes the reply and files a follow-up for the team.
system: >-
  You write short, polite replies to customers. Use only the triage summary and order status you
  are given; never promise refunds. When the request needs a person, call notify_team once.
prompt: |
  Customer request: {{message}}
  Triage (JSON): {{triage}}
output_schema:
  type: object
  required: [reply]
  properties:
    reply: {{type: string, minLength: 1}}
    escalated: {{type: [boolean, "null"], description: whether notify_team was called}}
model:
  profile: default
  max_tokens: 512
tools: [notify_team]
""",
    "prompts/triager.txt": """\
Customer request:
{{message}}

Customer tier: {{tier}}
""",
    "tools/shop.py": '''\
"""Tools of this project: plain Python functions; the argument schema comes from the type hints."""

from __future__ import annotations

import json
from pathlib import Path

from agentflow_dagster.tools import tool

ORDERS = {{"A-1001": "shipped", "A-1002": "processing", "A-1003": "delivered"}}


@tool(side_effects="none")
def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order's status.

    Args:
        order_id: the order id, e.g. A-1001
    """
    return {{"order_id": order_id, "status": ORDERS.get(order_id.strip().upper(), "unknown")}}


@tool(side_effects="external")
def notify_team(summary: str, idempotency_key: str = "") -> dict[str, str]:
    """Tell the support team about a request that needs a person (appends to the project's outbox).

    Args:
        summary: one sentence for the team
        idempotency_key: filled in by the platform; the same key is never delivered twice
    """
    outbox = Path(__file__).resolve().parents[1] / "outbox.jsonl"
    with outbox.open("a") as f:
        f.write(json.dumps({{"summary": summary, "idempotency_key": idempotency_key}}) + "\\n")
    return {{"delivered": "yes"}}
''',
    "workflows/customer_request.yaml": """\
name: customer_request
version: "1.0.0"
description: Triage a customer request (with an order lookup tool) and draft the reply.
inputs:
  message: {{type: string, required: true, max_length: 4000}}
  tier: {{type: string, required: false, default: standard}}
tasks:
  - task_id: triage
    agent: triager
    inputs: {{message: $request.message, tier: $request.tier}}
    retry: {{max_retries: 2, delay_s: 1, backoff: exponential, jitter: plus_minus}}
    timeout_s: 60
  - task_id: respond
    agent: responder
    depends_on: [triage]
    inputs: {{message: $request.message, triage: $tasks.triage}}
    retry: {{max_retries: 1, delay_s: 1}}
    timeout_s: 60
""",
    "README.md": """\
# {name}

An agentflow project: agents are data (`agents/*.yaml`), tools are Python (`tools/*.py`) or MCP
servers (`agentflow.yaml`), workflows are graphs of agent tasks (`workflows/*.yaml`), prompt
templates live in `prompts/`.

```bash
agentflow validate .                       # every file checked; errors name the file and the field
agentflow up --project .                   # the local stack serving this project
agentflow submit customer_request --input message="Where is my order A-1002?" --wait
agentflow reload                           # after editing a file: Dagster picks it up, no restart
```

Point it at a real model with `OPENAI_API_KEY` (api.openai.com) or `OPENAI_BASE_URL` (any
OpenAI-compatible server) and choose the model with `AGENTFLOW_MODEL` or `model:` in the files.
""",
}


def init_project(target: Path, name: str | None = None) -> list[Path]:
    """Write the starter project into `target` (must be empty or absent); returns the files written."""
    target = target.resolve()
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty; choose a new folder for the project")
    name = name or target.name.lower().replace("-", "_").replace(" ", "_")
    if not name.isidentifier() or not name[0].isalpha():
        raise ValueError(f"project name {name!r} must start with a letter and hold letters, digits, _")
    written = []
    for rel, body in FILES.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body.format(name=name))
        written.append(path)
    return written
