#!/usr/bin/env bash
# Rewrites .ci/constraints.txt from the venv the tests just passed in (run after a dependency change).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
{
  echo "# pip constraints: the versions the test suite last passed with (.ci/setup.sh installs with -c this file)."
  echo "# Regenerate after a dependency change: bash .ci/freeze.sh (torch is pinned by setup.sh itself)."
  python -m pip list --format=freeze --exclude-editable 2>/dev/null \
    | grep -viE "^(torch|agentflow-dagster|pip|setuptools|wheel)==" | sort -f
} > .ci/constraints.txt
echo "wrote .ci/constraints.txt ($(grep -vc '^#' .ci/constraints.txt) pins)"
