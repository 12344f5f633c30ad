"""A user's project: agentflow.yaml, agents/, tools/, workflows/, prompts/ (docs/projects.md)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from agentflow_dagster.errors import ProjectError
from agentflow_dagster.project.loader import Project, load_project

EXAMPLE_PROJECT = Path(__file__).resolve().parents[1] / "example_project"
PROJECT_ENV = "AGENTFLOW_PROJECT_DIR"


def project_dir() -> Path:
    """The project: AGENTFLOW_PROJECT_DIR, else the running stack's (`up --project`), else the example."""
    value = os.environ.get(PROJECT_ENV, "").strip()
    if value:
        return Path(value).expanduser().resolve()
    state = Path(os.environ.get("AGENTFLOW_DATA_DIR", ".agentflow")) / "stack.json"
    try:
        recorded = json.loads(state.read_text()).get("project_dir")
    except (OSError, ValueError):
        recorded = None
    return Path(recorded) if recorded else EXAMPLE_PROJECT


@functools.cache
def _load(root: str) -> Project:
    return load_project(root)


def current_project() -> Project:
    """The loaded project of this process (loaded once; a reload starts a new code-server process)."""
    return _load(str(project_dir()))


def refresh_if_changed(code_modules: tuple[str, ...] = ("agentflow_dagster.definitions",)) -> bool:
    """In a run worker forked from a long-lived process: forget a project whose files changed since.

    The warm launcher's workers inherit modules imported before a reload; when the project's files
    differ from the loaded ones, the project, its tool modules and the code location modules are
    dropped so the run imports them again (that run pays the import; unchanged projects pay a hash).
    """
    import sys

    from agentflow_dagster.project.loader import fingerprint

    if _load.cache_info().currsize == 0:
        return False
    root = project_dir()
    loaded = _load(str(root))
    if fingerprint(root)[0] == loaded.fingerprint:
        return False
    _load.cache_clear()
    for name in list(sys.modules):
        if name.startswith("agentflow_project_") or name in code_modules:
            del sys.modules[name]
    return True


def clear_cache() -> None:
    """Forget loaded projects (tests, and `agentflow validate` of several folders)."""
    _load.cache_clear()


__all__ = ["EXAMPLE_PROJECT", "PROJECT_ENV", "Project", "ProjectError", "clear_cache", "current_project",
           "load_project", "project_dir", "refresh_if_changed"]  # fmt: skip
