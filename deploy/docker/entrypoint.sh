#!/bin/sh
# Starts one agentflow process. With arguments, runs them as given (the Dagster Helm chart passes
# `dagster api grpc ...`); without, runs the process named by AGENTFLOW_ROLE:
#   code-server | webserver | daemon | api | metrics | init
set -eu

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

GRPC_PORT=4000
WORKSPACE=${DAGSTER_WORKSPACE:-/opt/dagster/app/workspace.yaml}

case "${AGENTFLOW_ROLE:-code-server}" in
  code-server)
    exec dagster api grpc -h 0.0.0.0 -p "$GRPC_PORT" -m agentflow_dagster.definitions ;;
  webserver)
    exec dagster-webserver -h 0.0.0.0 -p "${AGENTFLOW_WEBSERVER_PORT:-3000}" -w "$WORKSPACE" ;;
  daemon)
    exec python -m agentflow_dagster.instance.daemon run -w "$WORKSPACE" ;;
  api)
    # `agentflow api` reads AGENTFLOW_API_HOST / AGENTFLOW_API_PORT (agentflow_dagster/api/config.py).
    export AGENTFLOW_API_HOST="${AGENTFLOW_API_HOST:-0.0.0.0}" AGENTFLOW_API_PORT="${AGENTFLOW_API_PORT:-8080}"
    exec agentflow api ;;
  metrics)
    exec agentflow metrics-server --host 0.0.0.0 --port "${AGENTFLOW_METRICS_PORT:-9464}" ;;
  init)
    # One-shot: app schema migrations, Kafka topics, then Dagster's own storage schema.
    python - <<'PY'
from agentflow_dagster import names
from agentflow_dagster.db import migrate
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings

s = get_settings()
if not (s.postgres_url and s.kafka_bootstrap_servers):
    raise SystemExit("agentflow-entrypoint init: set AGENTFLOW_POSTGRES_URL and AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS")
migrate(s.postgres_url)
created = build_resources(s)["kafka"].ensure_topics(names.TOPICS, s.kafka_partitions)
print(f"init: schema migrated; topics created: {created or 'none (all present)'}")
PY
    exec dagster instance migrate ;;
  *)
    echo "agentflow-entrypoint: unknown AGENTFLOW_ROLE '${AGENTFLOW_ROLE}'" \
      "(one of code-server, webserver, daemon, api, metrics, init)" >&2
    exit 64 ;;
esac
