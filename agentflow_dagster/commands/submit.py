"""`agentflow submit`: publish a workflow request (or launch it through Dagster's GraphQL API) and,
with --wait, print its result."""

from __future__ import annotations

import json
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from kafka import TopicPartition

from agentflow_dagster import clients, names
from agentflow_dagster.clients import KafkaClients
from agentflow_dagster.commands.progress import LiveProgress
from agentflow_dagster.events import WorkflowRequest, WorkflowResult
from agentflow_dagster.observability import tracing
from agentflow_dagster.settings import Settings, get_settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from agentflow_dagster.workflows.spec import WorkflowSpec
    from resources.kafka import KafkaResource

ACTOR = "agentflow-cli"


def parse_inputs(pairs: tuple[str, ...], json_file: str | None) -> dict[str, Any]:
    """--input-json first, then each k=v (v parsed as JSON when it is valid JSON, else kept as text)."""
    inputs: dict[str, Any] = {}
    if json_file:
        text = sys.stdin.read() if json_file == "-" else Path(json_file).read_text()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise click.BadParameter(f"{json_file} must hold a JSON object", param_hint="--input-json")
        inputs.update(data)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not k=v", param_hint="--input")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def result_offsets(
    kafka: KafkaClients | KafkaResource, *, beginning: bool = False
) -> dict[TopicPartition, int]:
    """Where the results topic ends now (a new request's result can only come after), or where it begins."""
    consumer = kafka.consumer()
    try:
        tps = [
            TopicPartition(names.TOPIC_RESULTS, p) for p in consumer.partitions_for_topic(names.TOPIC_RESULTS)
        ]
        # Tansu may report low end offsets: reading a little earlier is harmless (filtered by plan_id).
        return dict(consumer.beginning_offsets(tps) if beginning else consumer.end_offsets(tps))
    finally:
        consumer.close()


def wait_for_result(
    kafka: KafkaClients | KafkaResource,
    plan_id: str,
    start: dict[TopicPartition, int],
    timeout: float,
    on_poll: Callable[[], None] | None = None,
) -> WorkflowResult | None:
    """Read the results topic from `start` until the plan's result arrives or `timeout` passes;
    `on_poll` runs about once a second meanwhile (progress)."""
    consumer = kafka.consumer()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        polled = 0.0
        while time.monotonic() < deadline:
            if on_poll is not None and time.monotonic() - polled >= 1.0:
                polled = time.monotonic()
                on_poll()
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    try:
                        result = WorkflowResult.model_validate_json(message.value)
                    except ValueError:
                        continue  # not ours to judge: other producers may share the topic
                    if result.plan_id == plan_id:
                        return result
        return None
    finally:
        consumer.close()


def _check_against_spec(req: WorkflowRequest) -> WorkflowSpec:
    """Refuse locally what the sensor would dead-letter: an unknown workflow or undeclared inputs."""
    from agentflow_dagster.workflows.loader import load_specs

    specs = load_specs()
    spec = specs.get(req.workflow)
    if spec is None:
        raise click.UsageError(f"unknown workflow {req.workflow!r}; known: {', '.join(sorted(specs))}")
    try:
        spec.validate_inputs(req.inputs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return spec


def _by_reference(req: WorkflowRequest, settings: Settings) -> WorkflowRequest:
    """Inputs above AGENTFLOW_INLINE_INPUT_LIMIT go to the object store, as the sensor would put them."""
    from sensors.workflow_requests import inputs_key

    blob = json.dumps(req.inputs, separators=(",", ":")).encode()
    if len(blob) <= settings.inline_input_limit:
        return req
    key = inputs_key(req.plan_id)
    store = clients.object_store(settings)
    store.ensure_bucket(names.BUCKET_ARTIFACTS)
    store.put(names.BUCKET_ARTIFACTS, key, blob, "application/json")
    return req.model_copy(update={"inputs": {}, "inputs_ref": key})


def _redis_or_none(resources: dict[str, Any]) -> Any:
    """The Redis client for the launch lock; without Redis the tag query alone guards against a rerun."""
    import redis as redis_lib

    client = resources["redis"].client
    try:
        client.ping()
    except redis_lib.RedisError as exc:
        click.echo(f"warning: Redis unreachable ({exc}); launching without the event lock", err=True)
        return None
    return client


def launch_direct(
    req: WorkflowRequest, spec: WorkflowSpec, dagster_url: str, location: str
) -> tuple[str, str, bool]:
    """(traceparent, run_id, launched_now): one Dagster run per event_id through the webserver's GraphQL."""
    from agentflow_dagster.api.direct import DirectLauncher, DirectLaunchError
    from agentflow_dagster.resources_env import build_resources

    settings = get_settings()
    resources = build_resources(settings)
    req = _by_reference(req, settings)
    launcher = DirectLauncher(
        dagster_url, location=location, redis=_redis_or_none(resources), specs={spec.name: spec}
    )
    tracing.setup_tracing("agentflow-cli")
    with tracing.span(f"launch {req.workflow}", attributes={"agentflow.plan_id": req.plan_id}):
        traceparent = tracing.inject_traceparent() or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        try:
            run_id, launched = launcher.launch(req, spec.version, traceparent)
        except DirectLaunchError as exc:
            raise click.ClickException(f"{exc} (is the webserver up? see `agentflow status`)") from exc
    tracing.flush()
    try:
        detail = {"workflow": req.workflow, "version": spec.version, "tenant": req.tenant}
        detail |= {"trace_id": traceparent.split("-")[1], "run_id": run_id, "dagster_url": launcher.url}
        action = "request.launched" if launched else "request.duplicate"
        resources["postgres"].audit(ACTOR, action, req.plan_id, req.event_id, path="direct", **detail)
    except Exception as exc:  # the run is launched; its request op writes the history anyway
        click.echo(f"warning: could not write the audit entry: {type(exc).__name__}: {exc}", err=True)
    return traceparent, run_id, launched


def publish_request(req: WorkflowRequest, kafka: KafkaClients) -> str:
    """Send the request to agentflow.workflow.requests under a producer span; returns its traceparent."""
    # No client instrumentation: this path uses neither Redis nor SQLAlchemy (importing their
    # instrumentations would load both, ~0.4 s); the send span below is the trace's root.
    tracing.setup_tracing("agentflow-cli", instrument=False)
    # The root of the workflow's trace: its context travels in the message's traceparent header.
    with tracing.send_span(
        names.TOPIC_REQUESTS, agentflow__plan_id=req.plan_id, gen_ai__workflow__name=req.workflow
    ):
        traceparent = tracing.inject_traceparent() or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        producer = kafka.producer()
        try:
            producer.send(
                names.TOPIC_REQUESTS,
                key=req.event_id.encode(),
                value=req.model_dump_json().encode(),
                headers=[("traceparent", traceparent.encode())],
            ).get(timeout=15)
        finally:
            producer.close(timeout=5)
    tracing.flush()
    return traceparent


def workflow_progress(engine: sa.Engine, plan_id: str, spec: WorkflowSpec) -> tuple[int, int, str]:
    """(tasks done, tasks in the spec, current step) from the execution history."""
    import sqlalchemy as sa  # only --wait reads the database: a plain submit starts without SQLAlchemy

    try:
        with engine.connect() as conn:
            status = conn.execute(
                sa.text("SELECT status FROM workflow_runs WHERE plan_id = :p"), {"p": plan_id}
            ).scalar()
            # The latest attempt of each task key (fanned-out tasks have one key per item).
            latest = conn.execute(
                sa.text(
                    "SELECT DISTINCT ON (task_id) task_id, status FROM task_runs WHERE plan_id = :p "
                    "ORDER BY task_id, started_at DESC, id DESC"
                ),
                {"p": plan_id},
            ).all()
    except sa.exc.SQLAlchemyError as exc:
        return 0, len(spec.task_ids), f"progress unavailable (Postgres: {type(exc).__name__})"
    by_task: dict[str, list[str]] = {}
    for key, task_status in latest:
        by_task.setdefault(key.split("[", 1)[0], []).append(task_status)
    done = sum(1 for s in by_task.values() if all(x == "succeeded" for x in s))
    running = sorted(k for k, s in latest if s == "running")
    if status is None:
        step = "waiting for the request sensor"
    elif running:
        step = f"{status}: {', '.join(running)}"
    else:
        step = str(status)
    return done, len(spec.task_ids), step


def _default_dagster_url() -> str:
    return f"http://127.0.0.1:{get_settings().webserver_port}"


@click.command()
@click.argument("workflow")
@click.option("--input", "pairs", multiple=True, metavar="K=V", help="an input; V is JSON or text")
@click.option("--input-json", type=str, help="a JSON object of inputs ('-' for stdin)")
@click.option("--tenant", default="default", show_default=True)
@click.option("--priority", default=0, show_default=True, type=click.IntRange(-10, 10))
@click.option("--event-id", help="defaults to a new id; resubmitting an id is a no-op (same plan)")
@click.option("--wait", is_flag=True, help="wait for the result and print it")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait with --wait")
@click.option(
    "--direct", is_flag=True, help="launch through the Dagster webserver's GraphQL API instead of Kafka"
)
@click.option(
    "--dagster-url",
    default=_default_dagster_url,
    show_default="http://127.0.0.1:$AGENTFLOW_WEBSERVER_PORT (3000)",
    help="the webserver --direct launches through",
)
@click.option(
    "--dagster-location", default="agentflow", show_default=True, help="code location of the workflow jobs"
)
def submit(
    workflow: str,
    pairs: tuple[str, ...],
    input_json: str | None,
    tenant: str,
    priority: int,
    event_id: str | None,
    wait: bool,
    timeout: float,
    direct: bool,
    dagster_url: str,
    dagster_location: str,
) -> None:
    """Publish a request for WORKFLOW to agentflow.workflow.requests (or, with --direct, launch its run)."""
    try:
        req = WorkflowRequest(
            event_id=event_id or f"cli-{uuid.uuid4().hex}",
            workflow=workflow,
            inputs=parse_inputs(pairs, input_json),
            tenant=tenant,
            priority=priority,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    spec = _check_against_spec(req)
    kafka = clients.kafka_clients(get_settings())
    start = result_offsets(kafka) if wait else {}
    if direct:
        traceparent, run_id, launched = launch_direct(req, spec, dagster_url, dagster_location)
        if wait and not launched:
            # The event already had a run, whose result may be on the topic already.
            start = result_offsets(kafka, beginning=True)
        launch_note = f" run_id={run_id} launched={'new' if launched else 'existing'}"
    else:
        traceparent, launch_note = publish_request(req, kafka), ""
    trace_id = traceparent.split("-")[1]
    click.echo(f"event_id={req.event_id} plan_id={req.plan_id} trace_id={trace_id}{launch_note}")
    if not wait:
        return
    # Both paths end the same way: the run-status sensor publishes one result per run that carries the
    # plan and event tags, which the request sensor and the direct launcher both set.
    from agentflow_dagster.db import make_engine

    engine = make_engine(clients.postgres_url(get_settings()))
    with LiveProgress(f"workflow {req.workflow}", "tasks") as bar:

        def show() -> None:
            bar.update(*workflow_progress(engine, req.plan_id, spec))

        result = wait_for_result(kafka, req.plan_id, start, timeout, on_poll=show)
    if result is None:
        raise click.ClickException(
            f"no result for {req.plan_id} within {timeout:.0f}s (see `agentflow status`)"
        )
    click.echo(result.model_dump_json(indent=2))
    if result.status == "waiting_approval":
        click.echo(f"waiting for approval: agentflow approve {req.plan_id} <task_id> [--reject]", err=True)
        sys.exit(3)
    if result.status != "succeeded":
        sys.exit(1)
