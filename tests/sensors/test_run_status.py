"""Run-status sensors: one result event per finished run, even when evaluated twice for the same run."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import MAX_RETRIES_TAG, WILL_RETRY_TAG

from agentflow_dagster import names
from agentflow_dagster.events import WorkflowResult, plan_id_for
from resources.kafka import KafkaResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.run_status import make_run_status_sensors
from tests.sensors.conftest import end_cursor, read_all
from tests.sensors.jobs import EchoSpec, echo_flow

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def queue_plan(postgres: PostgresResource, event_id: str, output: dict[str, object] | None) -> str:
    """What the request sensor and the task ops would have written for this plan."""
    plan_id = plan_id_for(event_id)
    with postgres.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status) "
                "VALUES (:p, :e, 'echo_flow', '1.2.0', 'acme', 'queued')"
            ),
            {"p": plan_id, "e": event_id},
        )
        if output is not None:
            conn.execute(
                sa.text(
                    "INSERT INTO task_outputs (plan_id, task_id, input_digest, agent, output, provider) "
                    "VALUES (:p, 'answer', 'd1', 'echo', CAST(:o AS jsonb), 'offline')"
                ),
                {"p": plan_id, "o": json.dumps(output)},
            )
    return plan_id


def run_job(
    instance: dg.DagsterInstance, event_id: str, fail: bool, max_retries: int | None = None
) -> dg.DagsterRun:
    tags = {
        names.TAG_PLAN_ID: plan_id_for(event_id),
        names.TAG_EVENT_ID: event_id,
        names.TAG_WORKFLOW: "echo_flow",
        names.TAG_TENANT: "acme",
        "agentflow/traceparent": TRACEPARENT,
    }
    if max_retries is not None:
        tags[MAX_RETRIES_TAG] = str(max_retries)
    result = echo_flow.execute_in_process(
        run_config={"ops": {"answer": {"config": {"fail": fail}}}},
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    return run


def evaluate_twice(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    event_type: dg.DagsterEventType,
    resources: dict[str, object],
) -> None:
    (entry,) = instance.all_logs(run.run_id, of_type=event_type)
    assert entry.dagster_event is not None
    for _ in range(2):
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=entry.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
            resources=resources,
        )
        if event_type == dg.DagsterEventType.RUN_FAILURE:
            context = context.for_run_failure()
        with context:
            sensor(context)  # type: ignore[call-arg]


def test_results_published_exactly_once_per_run(
    kafka: KafkaResource,
    postgres: PostgresResource,
    object_store: ObjectStoreResource,
    dagster_instance: dg.DagsterInstance,
) -> None:
    started, succeeded, failed, _ = make_run_status_sensors([echo_flow], {"echo_flow": EchoSpec()})
    resources: dict[str, object] = {"kafka": kafka, "postgres": postgres, "object_store": object_store}
    cursor = end_cursor(kafka, names.TOPIC_RESULTS)
    ok_event, bad_event = f"ok-{uuid.uuid4().hex[:8]}", f"bad-{uuid.uuid4().hex[:8]}"
    ok_plan = queue_plan(postgres, ok_event, {"answer": 42, "provider": "offline"})
    bad_plan = queue_plan(postgres, bad_event, None)

    ok_run = run_job(dagster_instance, ok_event, fail=False)
    bad_run = run_job(dagster_instance, bad_event, fail=True)
    evaluate_twice(started, dagster_instance, ok_run, dg.DagsterEventType.RUN_START, resources)
    evaluate_twice(succeeded, dagster_instance, ok_run, dg.DagsterEventType.RUN_SUCCESS, resources)
    evaluate_twice(failed, dagster_instance, bad_run, dg.DagsterEventType.RUN_FAILURE, resources)

    records = read_all(kafka, names.TOPIC_RESULTS, cursor)
    results = [WorkflowResult.model_validate_json(r.value) for r in records]
    assert sorted((r.plan_id, r.status) for r in results) == sorted(
        [(ok_plan, "succeeded"), (bad_plan, "failed")]
    )
    ok = next(r for r in results if r.status == "succeeded")
    assert (ok.event_id, ok.run_id, ok.tenant, ok.workflow) == (ok_event, ok_run.run_id, "acme", "echo_flow")
    assert ok.output == {"answer": 42, "provider": "offline"} and ok.error is None
    bad = next(r for r in results if r.status == "failed")
    assert bad.output is None and bad.error is not None and "told to fail" in bad.error
    assert all(r.header("traceparent") == TRACEPARENT for r in records)

    with postgres.engine.connect() as conn:
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute(
                sa.text(
                    "SELECT plan_id, status, dagster_run_ids, finished_at IS NOT NULL, "
                    "started_at IS NOT NULL "
                    "FROM workflow_runs WHERE plan_id IN (:a, :b)"
                ),
                {"a": ok_plan, "b": bad_plan},
            )
        )
        claims = conn.execute(
            sa.text("SELECT run_id, status FROM published_results WHERE plan_id IN (:a, :b)"),
            {"a": ok_plan, "b": bad_plan},
        ).all()
        actions = conn.execute(
            sa.text("SELECT action FROM audit_log WHERE plan_id = :a ORDER BY id"), {"a": ok_plan}
        ).scalars()
        action_list = list(actions)
    assert rows[ok_plan] == ("succeeded", [ok_run.run_id], True, True)
    assert rows[bad_plan][:3] == ("failed", [bad_run.run_id], True)
    assert sorted(claims) == sorted([(ok_run.run_id, "succeeded"), (bad_run.run_id, "failed")])
    assert action_list.count("run.succeeded") == 1


def test_failed_run_seen_before_its_will_retry_tag_is_left_to_its_retry(
    kafka: KafkaResource,
    postgres: PostgresResource,
    object_store: ObjectStoreResource,
    dagster_instance: dg.DagsterInstance,
    dagster_storage_url: str,
) -> None:
    """Dagster tags a failed run `will_retry` just after storing the failure: a tick in between must not
    publish "failed" for a run that the instance retries (its retry publishes the one result)."""
    _, _, failed, _ = make_run_status_sensors([echo_flow], {"echo_flow": EchoSpec()})
    resources: dict[str, object] = {"kafka": kafka, "postgres": postgres, "object_store": object_store}
    cursor = end_cursor(kafka, names.TOPIC_RESULTS)
    retried_event, final_event = f"retry-{uuid.uuid4().hex[:8]}", f"final-{uuid.uuid4().hex[:8]}"
    queue_plan(postgres, retried_event, None)
    final_plan = queue_plan(postgres, final_event, None)
    # Executed without run retries, so neither run carries the tag: the window the sensor can see.
    retried_run = run_job(dagster_instance, retried_event, fail=True, max_retries=2)
    final_run = run_job(dagster_instance, final_event, fail=True, max_retries=0)
    assert WILL_RETRY_TAG not in retried_run.tags and WILL_RETRY_TAG not in final_run.tags

    overrides = {
        "storage": {"postgres": {"postgres_url": dagster_storage_url}},
        "run_retries": {"enabled": True},
    }
    with dg.instance_for_test(overrides=overrides) as retrying:
        evaluate_twice(failed, retrying, retried_run, dg.DagsterEventType.RUN_FAILURE, resources)
        evaluate_twice(failed, retrying, final_run, dg.DagsterEventType.RUN_FAILURE, resources)
        stored = retrying.get_run_by_id(retried_run.run_id)
        assert stored is not None and stored.tags.get(WILL_RETRY_TAG) == "true"  # decided as the daemon will

    records = read_all(kafka, names.TOPIC_RESULTS, cursor)
    results = [WorkflowResult.model_validate_json(r.value) for r in records]
    assert [(r.plan_id, r.status) for r in results] == [(final_plan, "failed")]
