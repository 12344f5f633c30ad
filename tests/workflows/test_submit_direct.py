"""`agentflow submit --direct` against a real dagster-webserver: one run per event_id, --wait, big inputs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from agentflow_dagster import names
from agentflow_dagster.commands.submit import submit
from agentflow_dagster.db import make_engine
from agentflow_dagster.events import plan_id_for
from agentflow_dagster.limits import MAX_RUNTIME_TAG, run_max_runtime_s
from agentflow_dagster.settings import Settings, get_settings
from agentflow_dagster.stack.services import free_port
from agentflow_dagster.workflows.loader import load_specs
from resources.kafka import KafkaResource
from resources.object_store import ObjectStore, ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.run_status import ResultPublisher
from tests.support.dagster_webserver import dagster_webserver, runs_for_event

_RUN = """
query($id: ID!) { runOrError(runId: $id) { ... on Run { jobName status runConfigYaml tags { key value } } } }
"""


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Location "agentflow": what `submit --direct` targets unless told otherwise.
    with dagster_webserver(tmp_path_factory.mktemp("dagster_submit_direct"), "agentflow") as url:
        yield url


@pytest.fixture
def platform_env(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, redis_url: str, kafka_bootstrap: str, object_store_dir: Path
) -> Iterator[None]:
    """The CLI's settings point at the session servers."""
    for key, value in {
        "AGENTFLOW_POSTGRES_URL": pg_url,
        "AGENTFLOW_REDIS_URL": redis_url,
        "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AGENTFLOW_DATA_DIR": str(object_store_dir.parent),
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _run(url: str, run_id: str) -> dict[str, Any]:
    resp = httpx.post(f"{url}/graphql", json={"query": _RUN, "variables": {"id": run_id}}, timeout=10)
    return dict(resp.json()["data"]["runOrError"])


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split())


def test_same_event_twice_launches_one_run_with_the_sensors_config(
    webserver: str, platform_env: None, pg_url: str
) -> None:
    event_id = f"cli-direct-{uuid.uuid4().hex[:12]}"
    args = ["support_triage", "--input", "message=refund please", "--tenant", "acme", "--event-id", event_id]
    args += ["--direct", "--dagster-url", webserver]
    first = CliRunner().invoke(submit, args)
    second = CliRunner().invoke(submit, args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    one, two = _fields(first.output.strip()), _fields(second.output.strip())
    assert one["plan_id"] == two["plan_id"] == plan_id_for(event_id)
    assert (one["launched"], two["launched"]) == ("new", "existing") and one["run_id"] == two["run_id"]
    assert runs_for_event(webserver, event_id) == [one["run_id"]]

    run = _run(webserver, one["run_id"])
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["jobName"] == "support_triage"
    assert tags[names.TAG_PLAN_ID] == one["plan_id"] and tags[names.TAG_EVENT_ID] == event_id
    assert tags[names.TAG_TENANT] == "acme" and tags[names.TAG_TRACE_ID] == one["trace_id"]
    # The run is bounded by its spec's worst case, as on the Kafka path.
    assert tags[MAX_RUNTIME_TAG] == str(run_max_runtime_s(load_specs()["support_triage"]))
    config = yaml.safe_load(run["runConfigYaml"])["ops"]["request"]["config"]
    assert config["inputs"] == {"message": "refund please"} and config["inputs_ref"] is None
    assert [config[k] for k in ("workflow", "version", "event_id")] == ["support_triage", "1.0.0", event_id]
    assert config["traceparent"].split("-")[1] == one["trace_id"]

    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            actions = conn.execute(
                sa.text("SELECT action, detail FROM audit_log WHERE plan_id = :p ORDER BY id"),
                {"p": one["plan_id"]},
            ).all()
    finally:
        engine.dispose()
    assert [a for a, _ in actions] == ["request.launched", "request.duplicate"]
    assert actions[0][1]["run_id"] == one["run_id"] and actions[0][1]["path"] == "direct"


def test_large_inputs_travel_by_reference(
    webserver: str, platform_env: None, monkeypatch: pytest.MonkeyPatch, object_store: ObjectStore
) -> None:
    monkeypatch.setenv("AGENTFLOW_INLINE_INPUT_LIMIT", "64")
    get_settings.cache_clear()
    message = "my invoice is wrong " * 20
    out = CliRunner().invoke(
        submit, ["support_triage", "--input", f"message={message}", "--direct", "--dagster-url", webserver]
    )
    assert out.exit_code == 0, out.output
    fields = _fields(out.output.strip())
    config = yaml.safe_load(_run(webserver, fields["run_id"])["runConfigYaml"])["ops"]["request"]["config"]
    assert config["inputs"] == {} and config["inputs_ref"] == f"requests/{fields['plan_id']}.json"
    stored = object_store.get(names.BUCKET_ARTIFACTS, config["inputs_ref"])
    assert json.loads(stored) == {"message": message}


def test_wait_prints_the_result_the_run_status_sensor_publishes(
    webserver: str, platform_env: None, pg_url: str, kafka_bootstrap: str, object_store_dir: Path
) -> None:
    """The run-status sensor's publisher, given the launched run, emits the result --wait prints."""
    event_id = f"cli-wait-{uuid.uuid4().hex[:12]}"
    published: list[str] = []

    def play_the_sensor() -> None:
        deadline = time.monotonic() + 60
        while not (runs := runs_for_event(webserver, event_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        run = _run(webserver, runs[0])
        dagster_run = dg.DagsterRun(
            job_name=run["jobName"], run_id=runs[0], tags={t["key"]: t["value"] for t in run["tags"]}
        )
        publisher = ResultPublisher(
            KafkaResource(bootstrap_servers=kafka_bootstrap),
            PostgresResource(url=pg_url),
            ObjectStoreResource(local_dir=str(object_store_dir)),
            Settings(),
            {"support_triage": ["workflow_result"]},
        )
        if publisher.publish(dagster_run, "succeeded", None, time.time()):
            published.append(runs[0])

    thread = threading.Thread(target=play_the_sensor)
    thread.start()
    try:
        out = CliRunner().invoke(
            submit,
            ["support_triage", "--input", "message=hello", "--event-id", event_id, "--direct"]
            + ["--dagster-url", webserver, "--wait", "--timeout", "60"],
        )
    finally:
        thread.join()
    assert out.exit_code == 0, out.output
    # Progress lines go to stderr; stdout holds the ids line, then the result.
    first, rest = out.stdout.split("\n", 1)
    result = json.loads(rest)
    assert published == [_fields(first)["run_id"]] == [result["run_id"]]
    assert result["event_id"] == event_id and result["status"] == "succeeded"

    # The same event again: the existing run's result is already on the topic, and --wait finds it.
    again = CliRunner().invoke(
        submit,
        ["support_triage", "--input", "message=hello", "--event-id", event_id, "--direct"]
        + ["--dagster-url", webserver, "--wait", "--timeout", "30"],
    )
    assert again.exit_code == 0, again.output
    assert "launched=existing" in again.stdout and json.loads(again.stdout.split("\n", 1)[1]) == result


def test_unreachable_webserver_is_a_clear_error(platform_env: None) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = CliRunner().invoke(
        submit, ["support_triage", "--input", "message=x", "--direct", "--dagster-url", url]
    )
    assert out.exit_code == 1
    assert f"Dagster GraphQL at {url}" in out.output and "agentflow status" in out.output


def test_direct_refuses_undeclared_inputs_before_launching(platform_env: None) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = CliRunner().invoke(
        submit, ["support_triage", "--input", "question=x", "--direct", "--dagster-url", url]
    )
    assert out.exit_code == 2 and "undeclared inputs ['question']" in out.output
