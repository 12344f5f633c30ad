"""The whole code location loads, validates, and keeps its names (a renamed asset or job fails here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def _names() -> dict[str, list[str]]:
    from agentflow_dagster.definitions import defs

    repo = defs.get_repository_def()
    return {
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "assets": sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()),
        "asset_checks": sorted(k.to_user_string() for k in repo.asset_graph.asset_check_keys),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "resources": sorted(repo.get_top_level_resources()),
    }


def test_definitions_validate_cli(tmp_path: Path) -> None:
    # Run outside the repo: the CLI's temporary instance would otherwise read the stack's dagster.yaml.
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "agentflow_dagster.definitions"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_definitions_snapshot() -> None:
    names = _names()
    if os.environ.get("UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(names, indent=2) + "\n")
    assert names == json.loads(SNAPSHOT.read_text())
