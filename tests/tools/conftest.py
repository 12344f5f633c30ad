"""Fixtures for the tool tests: real Postgres/Redis/object store (tests/ops), spans in memory, a project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentflow_dagster.project import PROJECT_ENV, clear_cache
from agentflow_dagster.tools.mcp_sessions import SESSIONS
from tests.observability.conftest import spans  # noqa: F401  (re-exported fixture)
from tests.ops.conftest import engine, llm_server, workflow_resources  # noqa: F401  (re-exported fixtures)
from tests.tools.project import write_project


@pytest.fixture
def tool_log(tmp_path: Path) -> Path:
    """The tools' own record of every real execution (Python and MCP tools append a line each)."""
    path = tmp_path / "tool_calls.log"
    path.write_text("")
    return path


@pytest.fixture
def project(tmp_path: Path, tool_log: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The tool test project as the current project of this process (and of workers it starts)."""
    root = write_project(tmp_path / "project", tool_log)
    monkeypatch.setenv(PROJECT_ENV, str(root))
    monkeypatch.setenv("AGENTFLOW_TEST_TOOL_LOG", str(tool_log))
    clear_cache()
    yield root
    SESSIONS.close()  # the MCP server processes this test's calls started
    clear_cache()
