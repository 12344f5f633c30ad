#!/bin/sh
# Docker HEALTHCHECK for every role of the image: each role is checked by what it serves.
set -eu

http_ok() {
  python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)" "$1"
}

case "${AGENTFLOW_ROLE:-code-server}" in
  code-server) exec dagster api grpc-health-check -p 4000 ;;
  webserver) http_ok "http://127.0.0.1:${AGENTFLOW_WEBSERVER_PORT:-3000}/server_info" ;;
  daemon) exec dagster-daemon liveness-check ;;
  api) http_ok "http://127.0.0.1:${AGENTFLOW_API_PORT:-8080}/healthz" ;;
  metrics) http_ok "http://127.0.0.1:${AGENTFLOW_METRICS_PORT:-9464}/metrics" ;;
  init) exit 0 ;;
  *) echo "agentflow-healthcheck: unknown AGENTFLOW_ROLE '${AGENTFLOW_ROLE}'" >&2; exit 1 ;;
esac
