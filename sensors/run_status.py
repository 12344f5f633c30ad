"""Run-status sensors: execution history in Postgres, one `agentflow.workflow.results` event per run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import WILL_RETRY_TAG
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

from agentflow_dagster import names
from agentflow_dagster.events import WorkflowResult
from agentflow_dagster.settings import Settings, get_settings
from ops.approvals import RUN_REJECTED, RUN_WAITING, run_outcome
from resources.kafka import KafkaResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.workflow_requests import TAG_TRACEPARENT

ResultStatus = Literal["succeeded", "failed", "canceled", "waiting_approval", "rejected"]
# The compiler's collecting op, when it has one, holds the whole workflow's result.
RESULT_TASK_ID = "workflow_result"
_AUDIT = sa.text(
    "INSERT INTO audit_log (plan_id, actor, action, subject, detail) "
    "VALUES (:p, :a, :act, :s, CAST(:d AS jsonb))"
)
_APPEND_RUN_ID = (
    "dagster_run_ids = CASE WHEN dagster_run_ids @> jsonb_build_array(CAST(:run_id AS text)) "
    "THEN dagster_run_ids ELSE dagster_run_ids || jsonb_build_array(CAST(:run_id AS text)) END"
)


class SinkInfo(Protocol):
    """What the publisher needs from a workflow spec: its final tasks."""

    def sinks(self) -> list[str]: ...


def _ts(epoch: float | None) -> datetime:
    return datetime.fromtimestamp(epoch, UTC) if epoch else datetime.now(UTC)


def _run_error(instance: dg.DagsterInstance, run: dg.DagsterRun, fallback: str | None) -> str:
    """The failed steps and their errors, which say more than the run-level failure message."""
    lines = []
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        data = event.step_failure_data if event is not None else None
        if event is not None and data is not None and data.error is not None:
            error = data.error
            while error.cause is not None:  # Dagster wraps the op's own exception: report that one
                error = error.cause
            lines.append(f"{event.step_key}: {error.message.strip()}")
    return "\n".join(lines)[:4000] or (fallback or "run failed")


def _will_retry(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether the instance's run retries will re-execute this failed run (its retry then publishes).

    Dagster stores the run's failure first and tags it `will_retry` just after, so a sensor can see the
    failure before the tag. Without the tag, decide as the retry daemon will (and tag the run as it does).
    """
    tag = run.tags.get(WILL_RETRY_TAG)
    if tag is not None:
        return tag == "true"
    if not instance.run_retries_enabled or run.status != dg.DagsterRunStatus.FAILURE:
        return False
    return should_retry(run, instance)


def _final_output(
    conn: sa.Connection, plan_id: str, finals: Sequence[str], succeeded: bool
) -> tuple[str | None, Any, str | None]:
    """(task_id, output, output_ref): the compiler's workflow output, else the newest final task output."""
    if succeeded:
        # The compiler's result op writes the whole workflow output (or its reference) onto the plan's row.
        doc = conn.execute(
            sa.text("SELECT output FROM workflow_runs WHERE plan_id = :p"), {"p": plan_id}
        ).scalar()
        if isinstance(doc, dict) and isinstance(doc.get("output_ref"), str):
            return RESULT_TASK_ID, None, doc["output_ref"]
        if doc is not None:
            return RESULT_TASK_ID, doc, None
    rows = conn.execute(
        sa.text(
            "SELECT task_id, output, output_ref FROM task_outputs WHERE plan_id = :p "
            "ORDER BY (task_id = ANY(:finals)) DESC, created_at DESC LIMIT 1"
        ),
        {"p": plan_id, "finals": list(finals)},
    ).all()
    if not rows:
        return None, None, None
    task_id, output, output_ref = rows[0]
    return task_id, output, output_ref


class ResultPublisher:
    """Claims a run in `published_results`, publishes its WorkflowResult, then commits: once per run_id."""

    def __init__(
        self,
        kafka: KafkaResource,
        postgres: PostgresResource,
        object_store: ObjectStoreResource,
        settings: Settings,
        finals: Mapping[str, Sequence[str]],
        actor: str = "run_status_sensor",
    ):
        self.kafka, self.postgres, self.object_store = kafka, postgres, object_store
        self.settings, self.finals, self.actor = settings, finals, actor

    def started(self, run: dg.DagsterRun, at: float | None) -> None:
        """Mark the plan running (first start wins) and remember the Dagster run id."""
        plan_id = run.tags.get(names.TAG_PLAN_ID)
        if plan_id is None:
            return
        with self.postgres.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE workflow_runs SET "
                    # A late start event must not hide that the plan waits for an approval.
                    "status = CASE WHEN finished_at IS NULL AND status <> 'waiting_approval' THEN 'running' "
                    "ELSE status END,"
                    f" started_at = COALESCE(started_at, :at), updated_at = now(), {_APPEND_RUN_ID} "
                    "WHERE plan_id = :p"
                ),
                {"p": plan_id, "at": _ts(at), "run_id": run.run_id},
            )
            conn.execute(
                _AUDIT,
                {"p": plan_id, "a": self.actor, "act": "run.started", "s": run.run_id, "d": json.dumps({})},
            )

    def close_open_tasks(self, run: dg.DagsterRun) -> None:
        """Fail the task attempts a failed run left `running` (its worker died before closing them)."""
        plan_id = run.tags.get(names.TAG_PLAN_ID)
        if plan_id is None:
            return
        with self.postgres.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE task_runs SET status = 'failed', finished_at = now(), "
                    "error = 'the run worker stopped before this attempt finished' "
                    "WHERE plan_id = :p AND run_id = :r AND status = 'running'"
                ),
                {"p": plan_id, "r": run.run_id},
            )

    def publish(
        self, run: dg.DagsterRun, status: ResultStatus, error: str | None, finished: float | None
    ) -> bool:
        """Publish the run's result unless already published; True when this call published it."""
        tags = run.tags
        plan_id, event_id = tags.get(names.TAG_PLAN_ID), tags.get(names.TAG_EVENT_ID)
        if plan_id is None or event_id is None:
            return False  # not started from a workflow request (e.g. launched by hand from the UI)
        finished_at = _ts(finished)
        # One transaction: the claim row stays locked (a concurrent publisher waits on it) and is only
        # committed after the broker acknowledged the result, so a failed send leaves the run unclaimed.
        with self.postgres.engine.begin() as conn:
            # A run that stopped at an approval gate ends successfully without finishing the workflow;
            # a rejection ends it with status `rejected` and the reason.
            gate = run_outcome(conn, plan_id, run.run_id) if status == "succeeded" else None
            if gate is not None:
                status, error = ("rejected" if gate[0] == RUN_REJECTED else "waiting_approval"), gate[1]
            claimed = conn.execute(
                sa.text(
                    "INSERT INTO published_results (run_id, plan_id, status) VALUES (:r, :p, :s) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"r": run.run_id, "p": plan_id, "s": gate[0] if gate is not None else status},
            ).rowcount
            if not claimed:
                return False
            task_id: str | None = None
            output: Any = None
            output_ref: str | None = None
            if gate is None:
                finals = self.finals.get(run.job_name, ())
                task_id, output, output_ref = _final_output(conn, plan_id, finals, status == "succeeded")
            result = WorkflowResult(
                event_id=event_id,
                plan_id=plan_id,
                run_id=run.run_id,
                workflow=tags.get(names.TAG_WORKFLOW, run.job_name),
                tenant=tags.get(names.TAG_TENANT, "default"),
                status=status,
                error=error,
                finished_at=finished_at,
                output_ref=output_ref,
                output=self._inline(output) if output is not None else None,
            )
            if result.output is None and output is not None:
                result.output_ref = self._offload(output, plan_id, run.run_id)
            if gate is not None:
                self._record_gate(conn, run, result, gate[0])
            else:
                self._record(conn, run, result, task_id, finished_at)
            self._send(result, tags.get(TAG_TRACEPARENT))
        return True

    def _inline(self, output: Any) -> dict[str, Any] | None:
        """The output when it is small enough for the result event, else None (it goes by reference)."""
        value = output if isinstance(output, dict) else {"value": output}
        if len(json.dumps(value, default=str)) > self.settings.inline_input_limit:
            return None
        return value

    def _offload(self, output: Any, plan_id: str, run_id: str) -> str:
        key = f"results/{plan_id}/{run_id}.json"
        blob = json.dumps(output, default=str).encode()
        self.object_store.store.put(names.BUCKET_ARTIFACTS, key, blob, "application/json")
        return key

    def _record(
        self,
        conn: sa.Connection,
        run: dg.DagsterRun,
        result: WorkflowResult,
        task_id: str | None,
        at: datetime,
    ) -> None:
        output_doc = result.output if result.output is not None else {"output_ref": result.output_ref}
        params = {
            "p": result.plan_id,
            "run_id": run.run_id,
            "status": result.status,
            "at": at,
            "output": json.dumps(output_doc, default=str) if task_id and task_id != RESULT_TASK_ID else None,
            "error": result.error,
        }
        # A late event from an older run (e.g. one that was retried) must not overwrite a newer outcome.
        conn.execute(
            sa.text(
                f"UPDATE workflow_runs SET {_APPEND_RUN_ID}, updated_at = now(), "
                "status = CASE WHEN finished_at IS NULL OR finished_at <= :at THEN :status ELSE status END, "
                "output = CASE WHEN finished_at IS NULL OR finished_at <= :at "
                "THEN COALESCE(CAST(:output AS jsonb), output) ELSE output END, "
                "error = CASE WHEN finished_at IS NULL OR finished_at <= :at THEN :error ELSE error END, "
                "finished_at = GREATEST(finished_at, :at) WHERE plan_id = :p"
            ),
            params,
        )
        detail = {"status": result.status, "task_id": task_id, "output_ref": result.output_ref}
        if result.error:
            detail["error"] = result.error[:500]
        conn.execute(
            _AUDIT,
            {
                "p": result.plan_id,
                "a": self.actor,
                "act": f"run.{result.status}",
                "s": run.run_id,
                "d": json.dumps(detail),
            },
        )

    def _record_gate(
        self, conn: sa.Connection, run: dg.DagsterRun, result: WorkflowResult, gate: str
    ) -> None:
        """The gate op already set the plan's status (`waiting_approval` or `rejected`): add the run only."""
        conn.execute(
            sa.text(f"UPDATE workflow_runs SET {_APPEND_RUN_ID}, updated_at = now() WHERE plan_id = :p"),
            {"p": result.plan_id, "run_id": run.run_id},
        )
        action = "run.waiting_approval" if gate == RUN_WAITING else "run.rejected"
        detail = {"status": result.status, "detail": (result.error or "")[:500]}
        conn.execute(
            _AUDIT,
            {"p": result.plan_id, "a": self.actor, "act": action, "s": run.run_id, "d": json.dumps(detail)},
        )

    def _send(self, result: WorkflowResult, traceparent: str | None) -> None:
        headers = [("traceparent", traceparent.encode())] if traceparent else []
        producer = self.kafka.shared_producer()
        try:
            # Acknowledged (acks=all) before the tick's cursor moves on, as with a producer per result.
            producer.send(
                names.TOPIC_RESULTS,
                key=result.plan_id.encode(),
                value=result.model_dump_json().encode(),
                headers=headers,
            ).get(timeout=15)
        except Exception:
            self.kafka.drop_shared_producer()
            raise


def _finals_for(jobs: Sequence[dg.JobDefinition], specs: Mapping[str, SinkInfo]) -> dict[str, list[str]]:
    """Per job, the task ids whose output is the workflow's result."""
    out: dict[str, list[str]] = {}
    for job in jobs:
        spec = specs.get(job.name)
        out[job.name] = [RESULT_TASK_ID, *(spec.sinks() if spec is not None else [])]
    return out


def make_run_status_sensors(
    jobs: Sequence[dg.JobDefinition],
    specs: Mapping[str, SinkInfo] | None = None,
    *,
    settings: Settings | None = None,
    minimum_interval_seconds: int = 2,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> list[dg.SensorDefinition]:
    """Sensors that record run starts and publish one result per succeeded, failed or canceled run."""
    finals = _finals_for(jobs, specs or {})
    common: dict[str, Any] = {
        "monitored_jobs": list(jobs),
        "minimum_interval_seconds": minimum_interval_seconds,
        "default_status": default_status,
    }

    def publisher(
        kafka: KafkaResource, postgres: PostgresResource, store: ObjectStoreResource, actor: str
    ) -> ResultPublisher:
        return ResultPublisher(kafka, postgres, store, settings or get_settings(), finals, actor)

    def finished_at(context: dg.RunStatusSensorContext) -> float | None:
        record = context.instance.get_run_record_by_id(context.dagster_run.run_id)
        return record.end_time if record is not None else None

    @dg.run_status_sensor(
        name="workflow_run_started_sensor", run_status=dg.DagsterRunStatus.STARTED, **common
    )
    def started(
        context: dg.RunStatusSensorContext,
        kafka: KafkaResource,
        postgres: PostgresResource,
        object_store: ObjectStoreResource,
    ) -> None:
        record = context.instance.get_run_record_by_id(context.dagster_run.run_id)
        at = record.start_time if record is not None else None
        publisher(kafka, postgres, object_store, "workflow_run_started_sensor").started(
            context.dagster_run, at
        )

    @dg.run_status_sensor(
        name="workflow_result_success_sensor", run_status=dg.DagsterRunStatus.SUCCESS, **common
    )
    def succeeded(
        context: dg.RunStatusSensorContext,
        kafka: KafkaResource,
        postgres: PostgresResource,
        object_store: ObjectStoreResource,
    ) -> None:
        pub = publisher(kafka, postgres, object_store, "workflow_result_success_sensor")
        if pub.publish(context.dagster_run, "succeeded", None, finished_at(context)):
            context.log.info(f"published the result of run {context.dagster_run.run_id}")

    @dg.run_failure_sensor(name="workflow_result_failure_sensor", **common)
    def failed(
        context: dg.RunFailureSensorContext,
        kafka: KafkaResource,
        postgres: PostgresResource,
        object_store: ObjectStoreResource,
    ) -> None:
        run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
        pub = publisher(kafka, postgres, object_store, "workflow_result_failure_sensor")
        pub.close_open_tasks(run)
        if _will_retry(context.instance, run):
            # The instance re-executes this run (run_retries): its retry publishes the event's one result.
            context.log.info(f"run {run.run_id} failed and will be retried; result left to the retry")
            return
        error = _run_error(context.instance, run, context.failure_event.message)
        if pub.publish(run, "failed", error, finished_at(context)):
            context.log.info(f"published the failure of run {run.run_id}")

    @dg.run_status_sensor(
        name="workflow_result_canceled_sensor", run_status=dg.DagsterRunStatus.CANCELED, **common
    )
    def canceled(
        context: dg.RunStatusSensorContext,
        kafka: KafkaResource,
        postgres: PostgresResource,
        object_store: ObjectStoreResource,
    ) -> None:
        pub = publisher(kafka, postgres, object_store, "workflow_result_canceled_sensor")
        if pub.publish(context.dagster_run, "canceled", "run canceled", finished_at(context)):
            context.log.info(f"published the cancellation of run {context.dagster_run.run_id}")

    return [started, succeeded, failed, canceled]
