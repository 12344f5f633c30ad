"""`agentflow workflows` lists shipped specs, versions and declared inputs."""

from __future__ import annotations

import json

from click.testing import CliRunner

from agentflow_dagster.commands.workflows import workflows


def test_workflows_json() -> None:
    result = CliRunner().invoke(workflows, ["--json"])
    assert result.exit_code == 0, result.output
    listed = {w["name"]: w for w in json.loads(result.output)}
    assert {"research_report", "support_triage", "summarize_with_fallback"} <= set(listed)
    message = next(i for i in listed["support_triage"]["inputs"] if i["name"] == "message")
    assert message == {
        "name": "message",
        "type": "string",
        "required": True,
        "max_length": 8000,
        "description": "the customer's message",
    }
    assert listed["research_report"]["version"] == "1.1.0"


def test_workflows_text() -> None:
    result = CliRunner().invoke(workflows, [])
    assert result.exit_code == 0 and "support_triage 1.0.0" in result.output
    assert "message: string (required, max_length 8000)" in result.output
