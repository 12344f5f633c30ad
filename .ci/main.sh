#!/usr/bin/env bash
# The main command: set up, start the local stack, check it, run a first workflow and print its result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
agentflow up
agentflow status
# A small real collection first (this project's own docs), so the first workflow's research is grounded
# in passages it quotes with their sources, offline or not.
agentflow ingest docs --collection research_docs --wait
agentflow submit research_report \
  --input "topic=How do Kafka sensors turn events into Dagster runs?" \
  --input collection=research_docs \
  --wait --timeout 600
echo
echo "The stack keeps running: Dagster UI at http://127.0.0.1:${AGENTFLOW_WEBSERVER_PORT:-3000}; stop it with: agentflow down"
