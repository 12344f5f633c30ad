"""`agentflow submit`: publish a workflow request and, with --wait, print its result."""

from __future__ import annotations

import json
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from kafka import TopicPartition

from agentflow_dagster import names
from agentflow_dagster.events import WorkflowRequest, WorkflowResult
from agentflow_dagster.observability import tracing
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings
from resources.kafka import KafkaResource


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


def result_offsets(kafka: KafkaResource) -> dict[TopicPartition, int]:
    """Where the results topic ends now; a result for this request can only come after."""
    consumer = kafka.consumer()
    try:
        tps = [
            TopicPartition(names.TOPIC_RESULTS, p) for p in consumer.partitions_for_topic(names.TOPIC_RESULTS)
        ]
        # Tansu may report low end offsets: reading a little earlier is harmless (filtered by plan_id).
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()


def wait_for_result(
    kafka: KafkaResource, plan_id: str, start: dict[TopicPartition, int], timeout: float
) -> WorkflowResult | None:
    """Read the results topic from `start` until the plan's result arrives or `timeout` passes."""
    consumer = kafka.consumer()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
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


def _check_against_spec(req: WorkflowRequest) -> None:
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


@click.command()
@click.argument("workflow")
@click.option("--input", "pairs", multiple=True, metavar="K=V", help="an input; V is JSON or text")
@click.option("--input-json", type=str, help="a JSON object of inputs ('-' for stdin)")
@click.option("--tenant", default="default", show_default=True)
@click.option("--priority", default=0, show_default=True, type=click.IntRange(-10, 10))
@click.option("--event-id", help="defaults to a new id; resubmitting an id is a no-op (same plan)")
@click.option("--wait", is_flag=True, help="wait for the result and print it")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait with --wait")
def submit(
    workflow: str,
    pairs: tuple[str, ...],
    input_json: str | None,
    tenant: str,
    priority: int,
    event_id: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Publish a request for WORKFLOW to agentflow.workflow.requests."""
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
    _check_against_spec(req)
    kafka: KafkaResource = build_resources(get_settings())["kafka"]
    start = result_offsets(kafka) if wait else {}
    tracing.setup_tracing("agentflow-cli")
    # The root of the workflow's trace: its context travels in the message's traceparent header.
    with tracing.send_span(
        names.TOPIC_REQUESTS, agentflow__plan_id=req.plan_id, gen_ai__workflow__name=workflow
    ):
        traceparent = tracing.inject_traceparent() or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        trace_id = traceparent.split("-")[1]
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
    click.echo(f"event_id={req.event_id} plan_id={req.plan_id} trace_id={trace_id}")
    if not wait:
        return
    result = wait_for_result(kafka, req.plan_id, start, timeout)
    if result is None:
        raise click.ClickException(
            f"no result for {req.plan_id} within {timeout:.0f}s (see `agentflow status`)"
        )
    click.echo(result.model_dump_json(indent=2))
    if result.status != "succeeded":
        sys.exit(1)
