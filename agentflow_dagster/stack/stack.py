"""`agentflow up|status|down`: the local stack under one data directory, each process recorded by pid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import yaml

from agentflow_dagster import clients, names
from agentflow_dagster.rag import embed_service
from agentflow_dagster.settings import Settings
from agentflow_dagster.stack import checks, llm_server, services
from agentflow_dagster.stack.services import Service, StackError

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = "stack.json"


class Stack:
    """The components of one data directory: started by `up`, found again by `status` and `down`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.data = settings.data_path

    # --- state ------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.data / STATE_FILE

    def load_state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return dict(json.loads(self.state_path.read_text()))
        return {"services": {}}

    def save_state(self, state: dict[str, Any]) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    # --- addresses ----------------------------------------------------------------------------
    def addresses(self) -> dict[str, str]:
        s = self.settings
        return {
            "postgres": clients.postgres_url(s),
            "redis": s.redis_url or f"redis://127.0.0.1:{s.redis_port}/0",
            "kafka": clients.kafka_bootstrap(s),
            "object_store": clients.object_store_config(s)["endpoint"],
            "dagster_webserver": f"http://127.0.0.1:{s.webserver_port}",
        }

    def s3_credentials(self) -> services.S3Credentials | None:
        """AGENTFLOW_S3_ACCESS_KEY/SECRET_KEY for an external endpoint, else the embedded server's keys."""
        s = self.settings
        if s.s3_endpoint:
            if s.s3_access_key and s.s3_secret_key:
                return services.S3Credentials(s.s3_access_key, s.s3_secret_key)
            return None
        return services.load_s3_credentials(self.data)

    def process_env(self) -> dict[str, str]:
        """The environment every Dagster process of the stack gets."""
        addr = self.addresses()
        env = dict(os.environ)
        if creds := self.s3_credentials():
            # The object store resource reads AGENTFLOW_S3_*; boto3 (S3 compute logs) reads AWS_*.
            env.update(
                AGENTFLOW_S3_ACCESS_KEY=creds.access_key,
                AGENTFLOW_S3_SECRET_KEY=creds.secret_key,
                AWS_ACCESS_KEY_ID=creds.access_key,
                AWS_SECRET_ACCESS_KEY=creds.secret_key,
                AWS_DEFAULT_REGION=env.get("AWS_DEFAULT_REGION", services.S3_REGION),
            )
        env.update(
            {
                "DAGSTER_HOME": str(self.data / "dagster_home"),
                "AGENTFLOW_DATA_DIR": str(self.data),
                "AGENTFLOW_POSTGRES_URL": addr["postgres"],
                "AGENTFLOW_DAGSTER_POSTGRES_URL": addr["postgres"].replace(
                    "postgresql://", "postgresql+psycopg2://", 1
                ),
                "AGENTFLOW_REDIS_URL": addr["redis"],
                "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": addr["kafka"],
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        # The user project the code location serves (`agentflow up --project DIR`, kept in stack.json).
        if project := self.settings.project_dir or self.load_state().get("project_dir"):
            env["AGENTFLOW_PROJECT_DIR"] = str(Path(project).resolve())
        if llm := self.load_state()["services"].get("llm"):
            # The LLM resource then talks to the local model server, which needs no key (docs/llm.md).
            env.pop("OPENAI_API_KEY", None)
            env["OPENAI_BASE_URL"] = llm["address"]
            env["AGENTFLOW_LLM_MODEL"] = llm["model"]
            env["AGENTFLOW_LLM_RESPONSE_FORMAT"] = llm_server.RESPONSE_FORMAT
        return env

    # --- up -----------------------------------------------------------------------------------
    def up(self, echo: Any = print) -> dict[str, str]:
        """Start what is not running yet; idempotent."""
        self.data.mkdir(parents=True, exist_ok=True)
        state = self.load_state()
        running = state["services"]
        if self.settings.project_dir:
            state["project_dir"] = str(self.settings.project_dir.resolve())
        s = self.settings

        def ensure(name: str, external: str | None, start: Any) -> None:
            rec = running.get(name)
            if external:
                running[name] = {"managed": False, "address": external}
                return
            if rec and rec.get("managed") and services.pid_alive(rec["pid"]):
                echo(f"  {name:<18} already running (pid {rec['pid']})")
                return
            svc: Service = start()
            running[name] = {"managed": True, **asdict(svc)}
            self.save_state(state)
            echo(f"  {name:<18} started (pid {svc.pid}) {svc.address}")

        ensure("postgres", s.postgres_url, lambda: services.start_postgres(self.data, s.postgres_port))
        ensure("redis", s.redis_url, lambda: services.start_redis(self.data, s.redis_port))
        ensure("object_store", s.s3_endpoint, lambda: services.start_seaweedfs(self.data, s.s3_port))
        self.ensure_buckets()
        ensure("kafka", s.kafka_bootstrap_servers, self._start_kafka)
        # The embedding model, loaded once for every run worker and CLI call (rag/embed_service.py).
        embed_start = lambda: embed_service.start_service(self.data, self.process_env())  # noqa: E731
        ensure("embeddings", embed_service.stack_external(), embed_start)
        # The model server of an earlier `up --llm-gguf` comes back with the same file and port after a
        # crash: the Dagster processes started with its address keep working.
        prev = running.get("llm", {})
        if gguf_setting := s.llm_gguf or prev.get("gguf"):
            gguf = Path(gguf_setting).expanduser().resolve()
            port = s.llm_port or urlparse(prev.get("address", "")).port or services.free_port()
            args = (s.llm_chat_format, s.llm_server_args)
            ensure("llm", None, lambda: llm_server.start_llm_server(self.data, gguf, port, *args))
            running["llm"].setdefault("model", llm_server.model_alias(gguf))
            running["llm"].setdefault("gguf", str(gguf))
        self.save_state(state)
        self.prepare()
        ensure("dagster_webserver", None, self._start_webserver)
        ensure("dagster_daemon", None, self._start_daemon)
        ensure("metrics", None, self._start_metrics)
        self.save_state(state)
        self._wait_webserver()
        if (emb := running["embeddings"]).get("managed"):
            embed_service.wait_started(emb["address"], emb["log"], emb["pid"])
        return self.addresses()

    def prepare(self) -> None:
        """Schema migrations, topics, buckets and DAGSTER_HOME."""
        from agentflow_dagster.db import migrate
        from agentflow_dagster.resources_env import build_resources

        addr = self.addresses()
        _guard(
            "postgres", addr["postgres"], lambda: migrate(addr["postgres"]), "check AGENTFLOW_POSTGRES_URL"
        )
        res = build_resources(self.settings)
        _guard(
            "kafka",
            addr["kafka"],
            lambda: res["kafka"].ensure_topics(names.TOPICS, self.settings.kafka_partitions),
            "check AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS",
        )
        home = self.data / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        # The repo's dagster.yaml with compute logs in the stack's S3 bucket (SeaweedFS, or MinIO when set).
        instance = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
        instance.update(
            yaml.safe_load(
                _S3_COMPUTE_LOGS.format(
                    endpoint=self.s3_url(), local_dir=self.data / "compute_logs", region=services.S3_REGION
                )
            )
        )
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))

    def s3_url(self) -> str:
        endpoint = self.addresses()["object_store"]
        if "://" in endpoint:
            return endpoint
        return f"{'https' if self.settings.s3_secure else 'http'}://{endpoint}"

    def buckets(self) -> list[str]:
        """The DESIGN.md buckets, and the broker's when Tansu keeps its log in this S3 server."""
        return [
            *names.BUCKETS,
            *([services.BROKER_BUCKET] if not self.settings.kafka_bootstrap_servers else []),
        ]

    def ensure_buckets(self) -> None:
        from agentflow_dagster.resources_env import build_resources

        store = build_resources(self.settings)["object_store"].build()
        for bucket in self.buckets():
            _guard(
                "object_store",
                self.addresses()["object_store"],
                lambda b=bucket: store.ensure_bucket(b),
                "check AGENTFLOW_S3_ENDPOINT, AGENTFLOW_S3_ACCESS_KEY and AGENTFLOW_S3_SECRET_KEY",
            )

    def _start_kafka(self) -> Service:
        """Tansu with its log in the stack's S3 server (topics and offsets survive restarts)."""
        creds = self.s3_credentials()
        if creds is None:
            raise StackError(
                "kafka",
                self.addresses()["kafka"],
                "Tansu keeps its log in S3 but no S3 credentials are known",
                "set AGENTFLOW_S3_ACCESS_KEY and AGENTFLOW_S3_SECRET_KEY with AGENTFLOW_S3_ENDPOINT",
            )
        env = services.s3_storage_env(self.addresses()["object_store"], creds, self.settings.s3_secure)
        return services.start_kafka(self.data, self.settings.kafka_port, storage_env=env)

    def _workspace(self) -> Path:
        path = REPO_ROOT / "workspace.yaml"
        if path.exists():
            return path
        generated = self.data / "workspace.yaml"
        generated.write_text(
            "load_from:\n  - python_module:\n      module_name: agentflow_dagster.definitions\n"
            "      location_name: agentflow\n"
        )
        return generated

    def _spawn(self, name: str, args: list[str]) -> Service:
        log = self.data / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.process_env(),
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        return Service(name, proc.pid, "", str(log))

    def _start_webserver(self) -> Service:
        port = self.settings.webserver_port
        services._require_free("webserver", port)
        exe = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent)) or "dagster-webserver"
        svc = self._spawn(
            "dagster_webserver", [exe, "-h", "127.0.0.1", "-p", str(port), "-w", str(self._workspace())]
        )
        svc.address = f"http://127.0.0.1:{port}"
        return svc

    def _start_daemon(self) -> Service:
        # The stock dagster-daemon CLI with a sub-second sensor loop (agentflow_dagster/instance/daemon.py).
        module = "agentflow_dagster.instance.daemon"
        args = [sys.executable, "-m", module, "run", "-w", str(self._workspace())]
        svc = self._spawn("dagster_daemon", args)
        svc.address = str(self.data / "dagster_home")
        return svc

    def _start_metrics(self) -> Service:
        port = self.settings.metrics_port
        services._require_free("metrics", port)
        args = [sys.executable, "-m", "agentflow_dagster", "metrics-server", "--port", str(port)]
        svc = self._spawn("metrics", args)
        svc.address = f"http://127.0.0.1:{port}/metrics"
        return svc

    def _wait_webserver(self, timeout: float = 180) -> None:
        url = self.addresses()["dagster_webserver"]

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            services.wait_for(ready, timeout, "dagster-webserver", interval=1.0)
        except TimeoutError as exc:
            raise StackError(
                "dagster_webserver",
                url,
                "did not answer /server_info",
                f"see {self.data}/logs/dagster_webserver.log",
            ) from exc

    # --- status / down ------------------------------------------------------------------------
    def status(self) -> list[checks.Check]:
        """Every component's check, run concurrently (each has its own timeout), in a fixed order."""
        addr = self.addresses()
        services_state = self.load_state()["services"]
        # The project is validated in a child process, on the other core: loading it (pydantic models,
        # prompt templates) is most of the CPU `status` spends, and the other probes hold the GIL.
        # `agentflow validate` picks the project as the stack's processes do (project_dir()).
        env = self.process_env()
        validation = subprocess.Popen(
            [sys.executable, "-m", "agentflow_dagster", "validate", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        probes: list[Callable[[], checks.Check | list[checks.Check]]] = [
            lambda: checks.check_postgres(addr["postgres"]),
            lambda: checks.check_redis(addr["redis"]),
            lambda: checks.check_kafka(addr["kafka"]),
            lambda: checks.check_object_store(
                lambda: clients.object_store(self.settings), addr["object_store"], self.buckets()
            ),
            lambda: checks.check_dagster(addr["dagster_webserver"]),
            lambda: checks.check_metrics(f"http://127.0.0.1:{self.settings.metrics_port}/metrics"),
            lambda: self.check_project(env, validation),
        ]
        if llm := services_state.get("llm"):
            probes.append(lambda: llm_server.check_llm_server(llm["address"], llm["model"]))
        if (emb := services_state.get("embeddings")) and emb.get("managed"):
            probes.append(lambda: embed_service.check(emb["address"]))
        with ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="status") as pool:
            found = list(pool.map(lambda probe: probe(), probes))
        return [c for f in found for c in (f if isinstance(f, list) else [f])]

    def check_project(self, env: dict[str, str], validation: subprocess.Popen[str]) -> checks.Check:
        """The project the stack serves (loaded and validated by `validation`, an `agentflow validate
        --json` with the stack's environment `env`) and the LLM provider its runs use."""
        # The rule LLMResource applies in the runs: offline vs endpoint (resources_env.llm_resource).
        endpoint = clients.llm_endpoint(env.get("OPENAI_BASE_URL", ""), env.get("OPENAI_API_KEY", ""))
        if endpoint:
            provider = f"provider openai-compatible at {endpoint}"
            # The same precedence as llm_resource: the local model server's model, then AGENTFLOW_MODEL.
            model = env.get("AGENTFLOW_LLM_MODEL") or env.get("AGENTFLOW_MODEL")
            provider += f", model {model}" if model else ", models from the project"
        else:
            provider = (
                "provider offline-extractive (no OPENAI_API_KEY/OPENAI_BASE_URL: answers labelled offline)"
            )
        # Where the project is, should the child not say: AGENTFLOW_PROJECT_DIR, else the example project.
        root = env.get("AGENTFLOW_PROJECT_DIR") or "example project"
        try:
            out, err = validation.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            validation.kill()
            validation.communicate()
            return checks.Check("project", root, False, "validation did not finish within 120 s")
        try:
            summary = json.loads(out)  # {"ok": true, "project": ...} or, exit 1, {"ok": false, ..., "error"}
        except ValueError:
            last = (err.strip().splitlines() or [f"exit code {validation.returncode}"])[-1]
            return checks.Check("project", root, False, f"validation failed: {last}"[:400])
        if not summary.get("ok"):
            return checks.Check("project", summary["project"], False, str(summary.get("error"))[:400])
        detail = f"{summary['name']}: {len(summary['workflows'])} workflows; {provider}"
        return checks.Check("project", summary["project"], True, detail)

    def down(self, echo: Any = print) -> list[str]:
        """Stop, in reverse order, only the processes this data directory's `up` started."""
        state = self.load_state()
        stopped = []
        for name in (
            "metrics",
            "dagster_daemon",
            "dagster_webserver",
            "llm",
            "embeddings",
            "kafka",
            "object_store",
            "redis",
            "postgres",
        ):
            rec = state["services"].get(name)
            if not rec or not rec.get("managed"):
                continue
            if name == "postgres":
                services.stop_postgres(self.data)
            if name == "object_store" and services.pid_alive(rec["pid"]):
                services.stop_seaweedfs(rec["pid"])
            if services.pid_alive(rec["pid"]):
                services.stop_pid(rec["pid"])
            stopped.append(name)
            echo(f"  {name:<18} stopped (pid {rec['pid']})")
            del state["services"][name]
            self.save_state(state)
        return stopped


def _guard(component: str, address: str, action: Any, fix: str) -> None:
    """Turn a connection failure into a one-line StackError naming the component."""
    try:
        action()
    except StackError:
        raise
    except Exception as exc:
        first = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise StackError(component, address, f"unreachable ({first})", fix) from exc


_S3_COMPUTE_LOGS = """
compute_logs:
  module: agentflow_dagster.instance.compute_logs_s3
  class: RedirectS3ComputeLogManager
  config:
    bucket: dagster-compute-logs
    prefix: compute-logs
    endpoint_url: {endpoint}
    region: {region}
    local_dir: {local_dir}
"""
