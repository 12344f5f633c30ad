"""docs/architecture.svg is what Graphviz makes of docs/architecture.dot (never edited by hand)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _texts(svg: str) -> list[str]:
    """Every text line drawn in the picture, in order."""
    return [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]


def test_the_committed_picture_is_rendered_from_its_source() -> None:
    dot = shutil.which("dot")
    if not dot:
        pytest.skip("graphviz (Debian package) is not installed; .ci/setup.sh installs it")
    source = DOCS / "architecture.dot"
    fresh = subprocess.run(
        [dot, "-Tsvg", str(source)], capture_output=True, text=True, timeout=60, check=True
    )
    committed = (DOCS / "architecture.svg").read_text()
    assert _texts(fresh.stdout) == _texts(committed), (
        "docs/architecture.svg is stale: dot -Tsvg docs/architecture.dot -o docs/architecture.svg"
    )
    assert "docs/architecture.svg" in (DOCS / "architecture.md").read_text()
