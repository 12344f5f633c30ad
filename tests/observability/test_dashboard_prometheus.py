"""Every Grafana panel's query returns series from a real Prometheus scraping our metrics servers.

Prometheus (Debian package `prometheus`, installed by .ci/setup.sh) scrapes the agentflow metrics
server (after workflows ran in separate run-worker processes) and `agentflow api --workers 2`, whose
/metrics sums its workers (prometheus_client multiprocess mode), which this test checks too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from agentflow_dagster.db import make_engine
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.observability.metrics import AgentflowCollector, build_registry, serve
from agentflow_dagster.settings import Settings
from agentflow_dagster.stack.services import free_port
from tests.observability.conftest import finish, spawn_worker
from tests.support.api_server import api_env, running_api, stop

pytestmark = pytest.mark.timeout(600)
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "agentflow.json"
TRACEPARENT = "00-" + "ef" * 16 + "-" + "12" * 8 + "-01"
# What Grafana puts in place of its variables; rate windows hold several 2 s scrapes.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "10m"}


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, PromQL with the variables filled in as Grafana's "All" would, legend format)."""
    dash = json.loads(DASHBOARD.read_text())
    alls = {f"${v['name']}": v.get("allValue", ".*") for v in dash["templating"]["list"]}
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in sorted({**GRAFANA_VARS, **alls}.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unknown variable in {expr}"
            out.append((panel["title"], expr, target.get("legendFormat", "")))
    return out


def _sensor_instance() -> Any:
    """A Dagster instance whose request sensor has a cursor, as the daemon would have stored it."""
    from dagster._core.remote_origin import (
        GrpcServerCodeLocationOrigin,
        RemoteInstigatorOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        SensorInstigatorData,
    )
    from dagster._core.test_utils import instance_for_test

    return instance_for_test(), lambda inst: inst.add_instigator_state(
        InstigatorState(
            RemoteInstigatorOrigin(
                RemoteRepositoryOrigin(
                    GrpcServerCodeLocationOrigin(host="localhost", port=4000, location_name="agentflow"),
                    "__repository__",
                ),
                "workflow_request_sensor",
            ),
            InstigatorType.SENSOR,
            InstigatorStatus.RUNNING,
            SensorInstigatorData(cursor=json.dumps({"offsets": {"0": 0}})),
        )
    )


@pytest.fixture
def prometheus_bin() -> str:
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus (Debian package) is not installed; .ci/setup.sh installs it")
    return exe


def _counter(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name}{labels} is not in the scrape")


@pytest.fixture
def workflows_ran(pg_url: str, redis_url: str, object_store_dir: Path, tmp_path: Path) -> Iterator[sa.Engine]:
    """Two workflows run by two run-worker processes, and one dead-lettered event, in Postgres."""
    tenant = f"t_{uuid.uuid4().hex[:8]}"
    procs = [
        spawn_worker(
            pg_url, redis_url, object_store_dir,
            WorkflowRequest(
                event_id=f"ev-{uuid.uuid4().hex[:12]}", workflow="summarize_with_fallback", tenant=tenant,
                inputs={"document": f"Run {i}. Dagster is an orchestrator. It models data assets as code."},
            ),
            TRACEPARENT, tmp_path / f"w{i}",
        )
        for i in range(2)
    ]  # fmt: skip
    assert all(finish(p)["success"] for p in procs)
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_log (actor, action, subject, detail) VALUES ('test', "
                "'event.dead_lettered', 'agentflow.workflow.requests', CAST(:d AS jsonb))"
            ),
            {"d": json.dumps({"dlq_topic": "agentflow.workflow.requests.dlq"})},
        )
    yield engine
    engine.dispose()


def test_every_panel_query_returns_series(
    prometheus_bin: str,
    workflows_ran: sa.Engine,
    pg_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    object_store_dir: Path,
    tmp_path: Path,
) -> None:
    from resources.kafka import KafkaResource

    settings = Settings(
        data_dir=object_store_dir.parent,
        postgres_url=pg_url,
        redis_url=redis_url,
        kafka_bootstrap_servers=kafka_bootstrap,
    )
    multiproc = tmp_path / "api-metrics"
    env = api_env(settings, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    stack_state = tmp_path / "stack.json"
    instance_cm, add_cursor = _sensor_instance()
    with instance_cm as instance, running_api(env, tmp_path / "api.log", "--no-migrate", "--no-tracing",
                                              "--workers", "2") as api:  # fmt: skip
        add_cursor(instance)
        collector = AgentflowCollector(
            engine=workflows_ran,
            instance_factory=lambda: instance,
            kafka_consumer_factory=lambda: KafkaResource(bootstrap_servers=kafka_bootstrap).consumer(),
            stack_state=stack_state,
        )
        server, thread = serve(build_registry(collector), "127.0.0.1", 0)
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        jobs = {"agentflow": f"127.0.0.1:{server.server_port}", "agentflow-api": api.removeprefix("http://")}
        config.write_text(
            "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s}\nscrape_configs:\n"
            + "".join(
                f"  - {{job_name: {j}, static_configs: [{{targets: ['{t}']}}]}}\n" for j, t in jobs.items()
            )
        )
        prom = subprocess.Popen(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
        )  # fmt: skip
        # The process panels read the pids the stack records: this test process and Prometheus.
        stack_state.write_text(
            json.dumps({"services": {"pytest": {"pid": os.getpid()}, "prometheus": {"pid": prom.pid}}})
        )
        try:
            # API traffic over both workers; every scrape, whichever worker answers, shows all of it.
            def healthz_count() -> float:
                text = httpx.get(f"{api}/metrics", timeout=10).text
                return _counter(text, "agentflow_api_requests_total", route="/healthz")

            before = healthz_count()
            for _ in range(20):
                assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
            seen = {healthz_count() for _ in range(8)}
            assert seen == {before + 20}, seen
            pids = {re.sub(r"\D", "", p.name) for p in multiproc.glob("counter_*.db")}
            assert len(pids) >= 2, f"one worker wrote counters: {sorted(multiproc.iterdir())}"

            prom_api = f"http://127.0.0.1:{prom_port}/api/v1/query"
            # Ready when both targets were scraped often enough for the rate windows and the last
            # scrape of the metrics server had every source (Postgres, Dagster, Kafka, processes) up.
            ready = "sum(count_over_time(up[1m])) >= 12 and on() sum(agentflow_metrics_source_up) == 4"
            deadline = time.monotonic() + 180  # generous: the machine may be busy
            while True:
                try:
                    r = httpx.get(prom_api, params={"query": ready}, timeout=5)
                    if r.status_code == 200 and r.json()["data"]["result"]:
                        break
                except httpx.TransportError:
                    pass
                assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"not ready in 180 s: {collector.errors}"
                time.sleep(1)
            targets = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=5).json()
            assert {t["health"] for t in targets["data"]["activeTargets"]} == {"up"}, targets
            empty, unlabelled = [], []
            queries = panel_queries()
            for title, expr, legend in queries:
                r = httpx.get(prom_api, params={"query": expr}, timeout=10)
                assert r.status_code == 200, f"panel {title!r}: Prometheus rejected {expr}: {r.text}"
                result = r.json()["data"]["result"]
                if not result:
                    empty.append(f"{title}: {expr}")
                # A filter on an absent label still matches (`x=~".*"` matches ""), so check that each
                # series carries what the panel groups by and names in its legend.
                wanted = set(re.findall(r"\{\{(\w+)\}\}", legend))
                for group in re.findall(r"by \(([^)]*)\)", expr):
                    wanted |= {g.strip() for g in group.split(",")} - {"le", "instance", "job"}
                if any(not series["metric"].get(name) for series in result for name in wanted):
                    unlabelled.append(f"{title}: {sorted(wanted)} in {[s['metric'] for s in result][:3]}")
                if title in ("CPU (cores)", "Resident memory"):  # one series per stack process
                    procs = {s["metric"].get("process") for s in result if s["metric"]["job"] == "agentflow"}
                    assert procs == {"pytest", "prometheus"}, f"{title}: {result}"
            assert len(queries) >= 20
            assert not empty, "panels with no series:\n" + "\n".join(empty)
            assert not unlabelled, "series without the labels their panel shows:\n" + "\n".join(unlabelled)
        finally:
            stop(prom)
            server.shutdown()
            thread.join(5)
