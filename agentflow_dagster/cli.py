"""The `agentflow` command line."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator, MutableMapping

import click

# platformdirs (via pgserver) warns when XDG_RUNTIME_DIR is unset; it falls back to /tmp correctly.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


# name -> "module:attribute" under agentflow_dagster.commands. A command's module is imported only
# when that command runs (or --help lists it): `agentflow status` never imports Dagster or FastAPI.
COMMANDS = {
    "up": "stack:up",
    "init": "project:init",
    "validate": "project:validate",
    "reload": "project:reload",
    "status": "stack:status",
    "down": "stack:down",
    "keys": "keys:keys",
    "api": "api:api",
    "ingest": "rag:ingest",
    "search": "search:search",
    "submit": "submit:submit",
    "approve": "approve:approve",
    "workflows": "workflows:workflows",
    "metrics-server": "observability:metrics_server",
    "trace": "observability:trace",
    "audit": "audit:audit",
    "purge": "purge:purge_command",
    "runs": "runs:runs",
    "cancel": "runs:cancel",
    "retry": "runs:retry",
    "approvals": "runs:approvals",
}


class LazyCommands(MutableMapping[str, click.Command]):
    """`click.Group.commands` that imports a command's module on first lookup."""

    def __init__(self, specs: dict[str, str]):
        self._specs = dict(specs)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module, attr = self._specs[name].split(":")
            self._loaded[name] = getattr(
                importlib.import_module(f"agentflow_dagster.commands.{module}"), attr
            )
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command
        self._specs.setdefault(name, "")

    def __delitem__(self, name: str) -> None:
        self._specs.pop(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


@click.group(commands=LazyCommands(COMMANDS))
@click.version_option(package_name="agentflow-dagster", prog_name="agentflow")
def main() -> None:
    """agentflow: multi-agent AI workflows on Dagster."""
