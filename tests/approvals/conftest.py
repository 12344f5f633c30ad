"""An in-process stand-in for the daemon: ticks the real sensors and executes the runs they request,
against the session's Postgres, Redis, Tansu and object store and a Dagster instance on Postgres."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.storage.tags import RUN_KEY_TAG

from agentflow_dagster import names
from agentflow_dagster.events import ApprovalDecision, WorkflowResult
from agentflow_dagster.workflows.loader import load_spec_file, load_specs
from agentflow_dagster.workflows.spec import WorkflowSpec
from ops.compiler import build_workflow_jobs
from resources.kafka import KafkaResource
from resources.llm import LLMResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.redis import RedisResource
from sensors.approvals import make_approval_sensor
from sensors.run_status import make_run_status_sensors
from sensors.workflow_requests import make_workflow_request_sensor
from tests.api.conftest import api_config, api_settings, client, engine, keys, specs  # noqa: F401
from tests.sensors.conftest import (  # noqa: F401
    FAST,
    dagster_instance,
    dagster_storage_url,
    end_cursor,
    kafka,
    object_store,
    postgres,
    read_all,
)
from tests.sensors.test_run_status import evaluate_twice

SHIPPED = load_specs()["publish_with_approval"]
MESSAGE = "I was charged twice for my subscription this month. Please refund the second charge."


def variant(tmp_path: Path, name: str, **approval: Any) -> WorkflowSpec:
    """The shipped approval spec under another name, with other approval settings on `publish`."""
    raw = yaml.safe_load(Path(SHIPPED.source_file).read_text())
    raw["name"] = name
    for task in raw["tasks"]:
        if task["task_id"] == "publish":
            task["approval"] = approval
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec_file(path)


@dataclass
class Stack:
    """The workflow event path of one spec: request, approval and run-status sensors, and its job."""

    spec: WorkflowSpec
    kafka: KafkaResource
    postgres: PostgresResource
    instance: dg.DagsterInstance
    resources: dict[str, Any]
    cursors: dict[str, str] = field(default_factory=dict)
    runs: list[dg.DagsterRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.job = build_workflow_jobs([self.spec])[0]
        by_name = {self.spec.name: self.spec}
        self.request_sensor = make_workflow_request_sensor([self.job], by_name, reader_config=FAST)
        self.approval_sensor = make_approval_sensor([self.job], by_name, reader_config=FAST)
        self.started, self.succeeded, self.failed, _ = make_run_status_sensors([self.job], by_name)
        for topic in (names.TOPIC_REQUESTS, names.TOPIC_APPROVALS, names.TOPIC_RESULTS):
            self.cursors[topic] = end_cursor(self.kafka, topic)

    def produce(self, topic: str, value: bytes, key: str, traceparent: str | None = None) -> None:
        producer = self.kafka.producer()
        headers = [("traceparent", traceparent.encode())] if traceparent else []
        producer.send(topic, key=key.encode(), value=value, headers=headers).get(timeout=15)
        producer.close()

    def submit(self, event_id: str | None = None) -> str:
        """Publish a request event; returns its event_id."""
        event_id = event_id or f"appr-{uuid.uuid4().hex[:12]}"
        body = {"event_id": event_id, "workflow": self.spec.name, "inputs": {"message": MESSAGE}}
        self.produce(names.TOPIC_REQUESTS, json.dumps(body).encode(), event_id)
        return event_id

    def decide(
        self, plan_id: str, decision: str, actor: str, comment: str = "", **kw: Any
    ) -> ApprovalDecision:
        """Publish an approval event as the API would; returns it."""
        event = ApprovalDecision(
            event_id=kw.pop("event_id", f"approval-{uuid.uuid4().hex}"),
            plan_id=plan_id,
            task_id=kw.pop("task_id", "publish"),
            decision=decision,  # type: ignore[arg-type]
            comment=comment,
            tenant=kw.pop("tenant", "default"),
            actor=actor,
        )
        self.produce(names.TOPIC_APPROVALS, event.model_dump_json().encode(), plan_id)
        return event

    @property
    def sensor_resources(self) -> dict[str, Any]:
        return {
            "kafka": self.kafka,
            "postgres": self.postgres,
            "object_store": self.resources["object_store"],
        }

    def tick(self, sensor: dg.SensorDefinition, topic: str) -> list[dg.RunRequest]:
        """One sensor tick from its cursor; returns the run requests (the cursor advances)."""
        with dg.build_sensor_context(
            cursor=self.cursors[topic], instance=self.instance, resources=self.sensor_resources
        ) as context:
            result = sensor(context)
        assert isinstance(result, dg.SensorResult) and result.cursor is not None
        self.cursors[topic] = result.cursor
        return list(result.run_requests or [])

    def tick_requests(self) -> list[dg.RunRequest]:
        return self.tick(self.request_sensor, names.TOPIC_REQUESTS)

    def tick_approvals(self) -> list[dg.RunRequest]:
        return self.tick(self.approval_sensor, names.TOPIC_APPROVALS)

    def launch(self, request: dg.RunRequest) -> dg.DagsterRun:
        """Execute a requested run as the daemon would (tagged with its run_key), then its status sensors."""
        result = self.job.execute_in_process(
            run_config=request.run_config,
            instance=self.instance,
            resources=self.resources,
            tags={**request.tags, RUN_KEY_TAG: str(request.run_key)},
            raise_on_error=False,
        )
        run = self.instance.get_run_by_id(result.run_id)
        assert run is not None
        self.runs.append(run)
        self.evaluate(self.started, run, dg.DagsterEventType.RUN_START)
        if result.success:
            self.evaluate(self.succeeded, run, dg.DagsterEventType.RUN_SUCCESS)
        else:
            self.evaluate(self.failed, run, dg.DagsterEventType.RUN_FAILURE)
        return run

    def evaluate(
        self, sensor: dg.SensorDefinition, run: dg.DagsterRun, event_type: dg.DagsterEventType
    ) -> None:
        """A run-status sensor on `run`'s event, evaluated twice (as a restarted daemon may)."""
        evaluate_twice(sensor, self.instance, run, event_type, self.sensor_resources)

    def results(self) -> list[WorkflowResult]:
        """The result events published since the stack was built."""
        records = read_all(self.kafka, names.TOPIC_RESULTS, self.cursors[names.TOPIC_RESULTS])
        return [WorkflowResult.model_validate_json(r.value) for r in records]

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.postgres.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))


@pytest.fixture
def make_stack(
    kafka: KafkaResource,  # noqa: F811
    postgres: PostgresResource,  # noqa: F811
    object_store: ObjectStoreResource,  # noqa: F811
    dagster_instance: dg.DagsterInstance,  # noqa: F811
    redis_url: str,
) -> Callable[..., Stack]:
    def build(spec: WorkflowSpec = SHIPPED) -> Stack:
        resources = {
            "postgres": postgres,
            "redis": RedisResource(url=redis_url),
            "object_store": object_store,
            "llm": LLMResource(),
        }
        return Stack(spec, kafka, postgres, dagster_instance, resources)

    return build
