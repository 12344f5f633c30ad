#!/usr/bin/env bash
# The full test suite: setup, lint, types, then pytest (servers are started by the tests' fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"; mypy agentflow_dagster assets ops sensors resources
echo "== imports"; python .ci/check_imports.py  # every import declared in pyproject.toml, none unused
echo "== security"; bash .ci/security.sh
echo "== pytest"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit $rc
