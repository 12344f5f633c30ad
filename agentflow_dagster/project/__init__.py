"""A user's project: agentflow.yaml, agents/, tools/, workflows/, prompts/ (docs/projects.md)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from agentflow_dagster.project.errors import ProjectError
from agentflow_dagster.project.loader import Project, load_project

EXAMPLE_PROJECT = Path(__file__).resolve().parents[1] / "example_project"
PROJECT_ENV = "AGENTFLOW_PROJECT_DIR"


def project_dir() -> Path:
    """The project this process serves: AGENTFLOW_PROJECT_DIR, else the shipped example project."""
    value = os.environ.get(PROJECT_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else EXAMPLE_PROJECT


@functools.cache
def _load(root: str) -> Project:
    return load_project(root)


def current_project() -> Project:
    """The loaded project of this process (loaded once; a reload starts a new code-server process)."""
    return _load(str(project_dir()))


def clear_cache() -> None:
    """Forget loaded projects (tests, and `agentflow validate` of several folders)."""
    _load.cache_clear()


__all__ = ["EXAMPLE_PROJECT", "PROJECT_ENV", "Project", "ProjectError", "clear_cache", "current_project",
           "load_project", "project_dir"]  # fmt: skip
