"""Deployment files checked offline: compose config, Kubernetes schemas, Helm values, Dockerfile."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"  # the Kubernetes version the manifests are validated against
IMAGE = "registry.example.com/agentflow-dagster:0.1.0"
APP_SERVICES = (
    "agentflow-init",
    "dagster-code-server",
    "dagster-webserver",
    "dagster-daemon",
    "api",
    "metrics",
)
# Settings every app process needs to reach its servers (agentflow_dagster/settings.py fields).
CORE_FIELDS = (
    "postgres_url",
    "redis_url",
    "kafka_bootstrap_servers",
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "opensearch_url",
)
DASHBOARD_METRICS = (
    "agentflow_workflows_started_total",
    "agentflow_workflows_completed_total",
    "agentflow_workflows_failed_total",
    "agentflow_workflow_e2e_latency_seconds",
    "agentflow_task_duration_seconds",
    "agentflow_task_retries_total",
    "agentflow_task_failures_total",
    "agentflow_dlq_events_total",
    "agentflow_kafka_consumer_lag",
    "agentflow_run_queue_depth",
    "gen_ai_client_token_usage",
    "gen_ai_client_operation_duration_seconds",
    "agentflow_llm_calls_total",
    "agentflow_llm_cost_usd_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
)
ENV_NAME = re.compile(r"\bAGENTFLOW_[A-Z0-9_]+\b")


# --- helpers -------------------------------------------------------------------------------------
def _settings_env_names(path: Path, prefix: str) -> set[str]:
    """Env names of a pydantic-settings class file: prefix + FIELD, plus validation aliases."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                names.add(prefix + stmt.target.id.upper())
                for sub in ast.walk(stmt):
                    if isinstance(sub, ast.Call) and getattr(sub.func, "id", "") == "AliasChoices":
                        names.update(a.value for a in sub.args if isinstance(a, ast.Constant))
    return names


def settings_names() -> set[str]:
    return _settings_env_names(ROOT / "agentflow_dagster" / "settings.py", "AGENTFLOW_")


def known_env_names() -> set[str]:
    """Every AGENTFLOW_* name some code reads: Settings, ApiConfig, literal names in code and config."""
    known = settings_names()
    api_config = ROOT / "agentflow_dagster" / "api" / "config.py"
    if api_config.exists():
        known |= _settings_env_names(api_config, "AGENTFLOW_API_")
    sources = [
        ROOT / "dagster.yaml",
        DEPLOY / "docker" / "entrypoint.sh",
        DEPLOY / "docker" / "healthcheck.sh",
    ]
    for pkg in ("agentflow_dagster", "assets", "ops", "sensors", "resources"):
        sources += sorted((ROOT / pkg).rglob("*.py"))
    for src in sources:
        known |= set(ENV_NAME.findall(src.read_text()))
    return known


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "dagster-values.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []))


def compose_bin() -> str:
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip("docker-compose (Debian package) is not installed; .ci/setup.sh installs it")
    return exe


def compose_config(env_file: Path | None) -> subprocess.CompletedProcess[str]:
    args = [compose_bin(), "-f", str(DEPLOY / "compose.yaml")]
    if env_file:
        args += ["--env-file", str(env_file)]
    # A clean environment: interpolation must come from the env file alone.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    proc = compose_config(DEPLOY / ".env.example")
    assert proc.returncode == 0, f"docker-compose config rejected deploy/compose.yaml:\n{proc.stderr}"
    return dict(yaml.safe_load(proc.stdout))


# --- compose --------------------------------------------------------------------------------------
def test_compose_has_every_component(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    wanted = {
        "kafka",
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "opensearch",
        "otel-collector",
        "prometheus",
    }
    wanted |= {"grafana", "jaeger", *APP_SERVICES}
    assert wanted <= services, f"missing from deploy/compose.yaml: {sorted(wanted - services)}"
    s = compose["services"]
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in str(s["kafka"]["environment"]["KAFKA_PROCESS_ROLES"])
    assert s["postgres"]["image"].startswith("pgvector/pgvector:")
    assert s["opensearch"]["image"].startswith("opensearchproject/opensearch:")
    assert s["opensearch"]["environment"]["discovery.type"] == "single-node"
    for name, svc in s.items():
        if "build" not in svc:
            tag = svc["image"].rsplit(":", 1)[-1]
            assert ":" in svc["image"] and tag != "latest", (
                f"service {name}: pin the image tag ({svc['image']})"
            )


def test_compose_requires_secrets_from_env_file() -> None:
    proc = compose_config(None)
    assert proc.returncode != 0 and "POSTGRES_USER" in proc.stderr, proc.stderr


def test_compose_buckets_match_names(compose: dict[str, Any]) -> None:
    from agentflow_dagster import names

    script = " ".join(compose["services"]["minio-init"]["command"])
    for bucket in names.BUCKETS:
        assert f"local/{bucket}" in script, f"minio-init does not create bucket {bucket}"


def test_compose_app_services_share_settings(compose: dict[str, Any]) -> None:
    known = known_env_names()
    for name in APP_SERVICES:
        svc = compose["services"][name]
        env = svc["environment"]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        for field in CORE_FIELDS:
            assert f"AGENTFLOW_{field.upper()}" in env, (
                f"compose service {name} lacks AGENTFLOW_{field.upper()}"
            )
        assert env["AGENTFLOW_DAGSTER_POSTGRES_URL"].startswith("postgresql+psycopg2://")
        assert env["AGENTFLOW_POSTGRES_URL"].startswith("postgresql://")
        unknown = {k for k in env if k.startswith("AGENTFLOW_")} - known
        assert not unknown, f"compose service {name} sets variables no code reads: {sorted(unknown)}"


def test_compose_roles_exist_in_entrypoint(compose: dict[str, Any]) -> None:
    entry = (DEPLOY / "docker" / "entrypoint.sh").read_text()
    check = (DEPLOY / "docker" / "healthcheck.sh").read_text()
    for name in APP_SERVICES:
        role = compose["services"][name]["environment"]["AGENTFLOW_ROLE"]
        assert f"\n  {role})" in entry and f"\n  {role})" in check, (
            f"role {role} missing in deploy/docker/*.sh"
        )


def test_compose_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"compose service {name} mounts a missing file: {source}"


def test_env_example_names_are_read() -> None:
    known = known_env_names()
    names_ = [ln.split("=", 1)[0] for ln in (DEPLOY / ".env.example").read_text().splitlines() if "=" in ln]
    unknown = {n for n in names_ if n.startswith("AGENTFLOW_")} - known - {"AGENTFLOW_IMAGE"}
    assert not unknown, f"deploy/.env.example names variables no code reads: {sorted(unknown)}"
    values = dict(ln.split("=", 1) for ln in (DEPLOY / ".env.example").read_text().splitlines() if "=" in ln)
    for key in (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "AGENTFLOW_S3_SECRET_KEY",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert values[key].startswith("change-me"), f"{key} in deploy/.env.example must be a placeholder"


# --- Dagster instance config for compose --------------------------------------------------------
def test_dagster_docker_yaml_matches_repo_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes import ConfigurableClassData

    repo = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    docker = yaml.safe_load((DEPLOY / "dagster-docker.yaml").read_text())
    for key in (
        "storage",
        "run_coordinator",
        "run_monitoring",
        "run_retries",
        "sensors",
        "schedules",
        "python_logs",
    ):
        assert docker[key] == repo[key], f"deploy/dagster-docker.yaml `{key}` drifted from dagster.yaml"
    shutil.copy(DEPLOY / "dagster-docker.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("AGENTFLOW_DAGSTER_POSTGRES_URL", "postgresql+psycopg2://u:p@db:5432/agentflow")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cfg, _ = dagster_instance_config(str(tmp_path))
    for key in ("run_launcher", "run_coordinator", "compute_logs"):
        c = cfg[key]
        obj = ConfigurableClassData(c["module"], c["class"], yaml.safe_dump(c.get("config") or {})).rehydrate(
            object
        )
        assert type(obj).__name__ == c["class"]
    workspace = yaml.safe_load((DEPLOY / "workspace-docker.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    assert (grpc["host"], grpc["port"], grpc["location_name"]) == ("dagster-code-server", 4000, "agentflow")


# --- Kubernetes -----------------------------------------------------------------------------------
def test_k8s_manifests_validate_against_schema() -> None:
    import kubernetes_validate

    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    for kind in ("Deployment", "Service"):
        for name in ("agentflow-api", "agentflow-metrics"):
            assert (kind, name) in kinds, f"deploy/k8s lacks {kind} {name}"
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def test_k8s_validator_rejects_a_bad_manifest() -> None:
    """The schema check is real: a misspelt field fails."""
    import kubernetes_validate

    doc = next(d for _, d in k8s_docs() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_k8s_workloads_probes_resources_and_secrets() -> None:
    docs = k8s_docs()
    secrets = {
        k for _, d in docs if d["kind"] == "Secret" for k in d.get("stringData", {}) | d.get("data", {})
    }
    config = {k for _, d in docs if d["kind"] == "ConfigMap" for k in d["data"]}
    services = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Service"}
    known = known_env_names()
    for path, doc in docs:
        if doc["kind"] == "Secret":
            for key, value in doc.get("stringData", {}).items():
                assert "REPLACE_ME" in value or key == "AWS_DEFAULT_REGION", (
                    f"{path.name}: {key} holds a real value?"
                )
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in containers(doc):
            where = f"{path.name} container {c['name']}"
            assert c["image"] == IMAGE, f"{where}: image {c['image']} != {IMAGE}"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert probe in c, f"{where}: no {probe}"
            assert c["resources"]["requests"] and c["resources"]["limits"], (
                f"{where}: no resource requests/limits"
            )
            env = {e["name"]: e for e in c.get("env", [])}
            for e in env.values():
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets, f"{where}: secretKeyRef to missing key {ref['key']}"
            provided = set(env) | config
            for field in CORE_FIELDS:
                name = f"AGENTFLOW_{field.upper()}"
                assert name in provided, f"{where}: {name} is not set"
            for secret_name in ("AGENTFLOW_POSTGRES_URL", "AGENTFLOW_S3_SECRET_KEY", "OPENAI_API_KEY"):
                assert "secretKeyRef" in env[secret_name].get("valueFrom", {}), (
                    f"{where}: {secret_name} not from a Secret"
                )
            unknown = {n for n in provided if n.startswith("AGENTFLOW_")} - known
            assert not unknown, f"{where}: variables no code reads: {sorted(unknown)}"
            svc = services[doc["metadata"]["name"]]
            assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            ports = {p["name"] for p in c["ports"]}
            assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])


def test_helm_values() -> None:
    values = yaml.safe_load((K8S / "dagster-values.yaml").read_text())
    repo = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    (dep,) = values["dagster-user-deployments"]["deployments"]
    assert f"{dep['image']['repository']}:{dep['image']['tag']}" == IMAGE
    assert dep["dagsterApiGrpcArgs"] == ["-m", "agentflow_dagster.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    rc = repo["run_coordinator"]["config"]
    # The chart's daemon image is stock Dagster (no agentflow package): the stock coordinator with the
    # repo's limits; FastQueuedRunCoordinator only adds a sub-second dequeue loop to it.
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert repo["run_coordinator"]["class"] == "FastQueuedRunCoordinator"
    assert queued["maxConcurrentRuns"] == rc["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == [
        {
            "key": t["key"],
            "value": {"applyLimitPerUniqueValue": t["value"]["applyLimitPerUniqueValue"]},
            "limit": t["limit"],
        }
        for t in rc["tag_concurrency_limits"]
    ]
    mon, rm = daemon["runMonitoring"], repo["run_monitoring"]
    assert mon["enabled"] and mon["startTimeoutSeconds"] == rm["start_timeout_seconds"]
    assert mon["maxResumeRunAttempts"] == rm["max_resume_run_attempts"]
    rr, rrr = daemon["runRetries"], repo["run_retries"]
    assert rr["enabled"] and rr["maxRetries"] == rrr["max_retries"]
    assert rr["retryOnAssetOrOpFailure"] == rrr["retry_on_asset_or_op_failure"]
    docs = k8s_docs()
    secret_names = {d["metadata"]["name"] for _, d in docs if d["kind"] == "Secret"}
    config_names = {d["metadata"]["name"] for _, d in docs if d["kind"] == "ConfigMap"}
    referenced = [s["name"] for s in dep["envSecrets"]] + [values["global"]["postgresqlSecretName"]]
    assert set(referenced) <= secret_names, (
        f"Helm values reference missing Secrets: {set(referenced) - secret_names}"
    )
    assert {c["name"] for c in dep["envConfigMaps"]} <= config_names
    assert values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"] == "dagster-compute-logs"


# --- Dockerfile and entrypoint --------------------------------------------------------------------
def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1)), (
        "pin the base to an exact tag"
    )
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2 and all(f == "${PYTHON_IMAGE}" for f in froms), (
        f"multi-stage from the pinned base: {froms}"
    )
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), (
        "the final stage must run as a non-root USER"
    )
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines)
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    assert "download.pytorch.org/whl/cpu" in text and "ARG TORCH_VERSION=2.13.0" in text
    install = re.search(r'pip install -c constraints\.txt "\.\[([a-z,-]+)\]"', text)
    assert install and torch_at < install.start(), "install CPU torch before the extras, with the constraints"
    # The Helm values run each workflow with K8sRunLauncher: the image must carry dagster-k8s.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    image_reqs = [r for extra in install.group(1).split(",") for r in project["optional-dependencies"][extra]]
    launcher = yaml.safe_load((K8S / "dagster-values.yaml").read_text())["runLauncher"]["type"]
    assert launcher != "K8sRunLauncher" or any(r.startswith("dagster-k8s==") for r in image_reqs), image_reqs
    dagster_pin = next(r for r in project["dependencies"] if r.startswith("dagster-postgres=="))
    assert f"dagster-k8s=={dagster_pin.split('==')[1]}" in image_reqs, "libraries share the 0.x pin"
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            for src in [a for a in ln.split()[1:-1] if not a.startswith("--")]:
                assert (ROOT / src).exists(), f"Dockerfile copies a missing path: {src}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!deploy/docker/*.sh" in ignore and "!.ci/constraints.txt" in ignore


def test_compose_s3_credentials_match_the_local_stack(compose: dict[str, Any]) -> None:
    """The app services get the S3 variables `agentflow up` gives its processes (stack.process_env)."""
    stack_src = (ROOT / "agentflow_dagster" / "stack" / "stack.py").read_text()
    stack_names = set(re.findall(r"\b((?:AGENTFLOW_S3|AWS)_[A-Z_]+)=", stack_src))
    assert {"AGENTFLOW_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} <= stack_names
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        compose_names = {k for k in env if k.startswith(("AGENTFLOW_S3_", "AWS_"))}
        creds = {k for k in compose_names if "KEY" in k}
        assert creds == {n for n in stack_names if "KEY" in n}, (name, creds, stack_names)
        assert env["AWS_ACCESS_KEY_ID"] == env["AGENTFLOW_S3_ACCESS_KEY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == env["AGENTFLOW_S3_SECRET_KEY"]


def test_entrypoint_scripts_parse() -> None:
    for script in ("entrypoint.sh", "healthcheck.sh"):
        path = DEPLOY / "docker" / script
        proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
        assert os.access(path, os.X_OK), f"{script} must be executable"


def test_entrypoint_rejects_unknown_role() -> None:
    env = {**os.environ, "AGENTFLOW_ROLE": "nope"}
    proc = subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 64 and "unknown AGENTFLOW_ROLE 'nope'" in proc.stderr


def test_cli_commands_the_image_runs() -> None:
    """Every `agentflow` command the entrypoint runs exists, with the options it passes."""
    from agentflow_dagster.cli import main

    entrypoint = (DEPLOY / "docker" / "entrypoint.sh").read_text()
    assert "exec agentflow api" in entrypoint and "exec agentflow metrics-server --host 0.0.0.0" in entrypoint
    assert "api" in main.commands and "metrics-server" in main.commands
    opts = {o for p in main.commands["metrics-server"].params for o in getattr(p, "opts", [])}
    assert {"--host", "--port"} <= opts


@pytest.mark.stack
def test_entrypoint_init_role_against_real_servers(pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    """The compose init job for real: app schema, topics and Dagster's storage in a fresh database."""
    import sqlalchemy as sa

    from agentflow_dagster.db import make_engine

    engine = make_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS deploy_init"))
        conn.execute(sa.text("CREATE DATABASE deploy_init"))
    engine.dispose()
    url = pg_url.rsplit("/", 1)[0] + "/deploy_init"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")},
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AGENTFLOW_ROLE": "init",
        "AGENTFLOW_POSTGRES_URL": url,
        "AGENTFLOW_DAGSTER_POSTGRES_URL": url.replace("postgresql://", "postgresql+psycopg2://", 1),
        "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AGENTFLOW_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(home),
    }
    proc = subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "init: schema migrated" in proc.stdout
    engine = make_engine(url)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert {"agentflow_alembic_version", "runs", "event_logs"} <= tables


# --- observability config -----------------------------------------------------------------------------
def test_prometheus_scrapes_api_and_metrics(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"api:8080", "metrics:9464"} <= targets
    for target in targets:
        host = target.split(":")[0]
        assert host == "localhost" or host in compose["services"], (
            f"prometheus.yml scrapes unknown host {host}"
        )
    otel = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert otel["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert "otlp/jaeger" in otel["service"]["pipelines"]["traces"]["exporters"]


def test_grafana_dashboard_covers_the_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "agentflow.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    missing = [m for m in DASHBOARD_METRICS if m not in exprs]
    assert not missing, f"the Grafana dashboard has no panel for {missing}"
    for label in ("workflow", "tenant", "agent", "model", "topic", "partition"):
        assert re.search(rf"\b{label}\b", exprs), f"no panel groups by {label}"
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    assert {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p} <= uids
