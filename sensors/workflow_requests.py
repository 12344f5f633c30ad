"""`agentflow.workflow.requests` -> one Dagster run per event (run_key = event_id), bad events to the DLQ."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dagster as dg
import sqlalchemy as sa
from pydantic import ValidationError

from agentflow_dagster import names
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.limits import MAX_RUNTIME_TAG, TenantQuotas, TokenBudget, run_max_runtime_s
from agentflow_dagster.observability import tracing
from agentflow_dagster.observability.metrics import DLQ_ACTION
from agentflow_dagster.settings import Settings, get_settings
from agentflow_dagster.workflows.spec import WorkflowSpec
from resources.kafka import KafkaResource
from resources.object_store import ObjectNotFound, ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.kafka_reader import BadRecord, KafkaRecord, KafkaTopicReader, ReaderConfig

# Same key as the compiled jobs' own tag, so a run and its job agree.
TAG_VERSION = "agentflow/workflow_version"
TAG_TRACEPARENT = "agentflow/traceparent"
TAG_PRIORITY = "dagster/priority"
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

# (request, spec version, traceparent) -> run config of the workflow job.
RunConfigFn = Callable[[WorkflowRequest, str, str], dict[str, Any]]


class WorkflowInfo(Protocol):
    """What the sensor needs from a workflow spec (agentflow_dagster.workflows.spec.WorkflowSpec fits)."""

    version: str

    def validate_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]: ...


def max_runtime_tags(spec: WorkflowInfo | None) -> dict[str, str]:
    """`dagster/max_runtime` from a workflow spec's task timeouts and retries (none for other specs)."""
    return {MAX_RUNTIME_TAG: str(run_max_runtime_s(spec))} if isinstance(spec, WorkflowSpec) else {}


def compiler_run_config(req: WorkflowRequest, version: str, traceparent: str) -> dict[str, Any]:
    """The spec compiler's run config for a request (imported late: ops/ imports agents and the LLM stack)."""
    from ops.compiler import request_run_config

    return request_run_config(req, version, traceparent=traceparent)


def trace_id_from(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C traceparent header, else None."""
    match = _TRACEPARENT_RE.match((traceparent or "").strip().lower())
    if not match or match[1] == "ff" or match[2] == "0" * 32 or match[3] == "0" * 16:
        return None
    return match[2]


def inputs_key(plan_id: str) -> str:
    """Object key (bucket agentflow-artifacts) for a request's inputs that are too large to travel inline."""
    return f"requests/{plan_id}.json"


def letter_key(record: KafkaRecord) -> str:
    """The source record of a dead letter: coordinates plus fingerprint (offsets restart with Tansu)."""
    return f"{record.topic}[{record.partition}]@{record.offset}#{record.fingerprint}"


def audit_dead_letter(
    postgres: PostgresResource, actor: str, record: KafkaRecord, reason: str, dlq_topic: str
) -> None:
    """One audit row per dead-lettered event (`agentflow_dlq_events_total` counts these)."""
    detail = {
        "dlq_topic": dlq_topic,
        "source": f"{record.topic}[{record.partition}]@{record.offset}",
        "letter_key": letter_key(record),
    }
    postgres.audit(actor, DLQ_ACTION, None, record.topic, reason=reason[:1000], **detail)


def dead_letter_hooks(postgres: PostgresResource, actor: str) -> dict[str, Any]:
    """KafkaTopicReader's dead-letter callbacks for a sensor: each letter audited once written (the
    durable count behind /metrics), and not written again when a re-read record is already audited."""
    return {
        "on_dead_letter": lambda record, reason, dlq: audit_dead_letter(postgres, actor, record, reason, dlq),
        "already_dead_lettered": lambda record: dead_letter_recorded(postgres, record),
    }


def dead_letter_recorded(postgres: PostgresResource, record: KafkaRecord) -> bool:
    """Whether this very record was dead-lettered (and audited) before: a tick whose cursor was never
    saved (its daemon died mid-tick, the code server finished it) left its letters behind."""
    with postgres.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT 1 FROM audit_log WHERE action = :a AND detail->>'letter_key' = :k LIMIT 1"),
            {"a": DLQ_ACTION, "k": letter_key(record)},
        ).first()
    return row is not None


@dataclass
class RequestIntake:
    """Turns request records into RunRequests and their history rows; raises BadRecord for bad events."""

    jobs: Mapping[str, dg.JobDefinition]
    specs: Mapping[str, WorkflowInfo]
    run_config: RunConfigFn
    settings: Settings
    postgres: PostgresResource
    object_store: ObjectStoreResource
    quotas: TenantQuotas = field(default_factory=TenantQuotas)
    actor: str = "workflow_request_sensor"
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _budget: TokenBudget | None = None

    def handle(self, record: KafkaRecord) -> None:
        if len(record.value) > self.settings.max_event_bytes:
            raise BadRecord(
                f"oversized: {len(record.value)} bytes > max_event_bytes {self.settings.max_event_bytes}; "
                "put large inputs in the object store and send inputs_ref"
            )
        try:
            raw = json.loads(record.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRecord(f"not JSON: {exc}") from exc
        try:
            req = WorkflowRequest.model_validate(raw)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRecord(f"schema violation: {errors}") from exc
        if req.workflow not in self.jobs:
            raise BadRecord(
                f"unknown workflow {req.workflow!r}; known: {', '.join(sorted(self.jobs)) or 'none'}"
            )
        self._check_budget(req)
        req, version = self._checked_inputs(req)

        header = record.header("traceparent")
        trace_id = trace_id_from(header)
        generated = trace_id is None or header is None
        if trace_id is None or header is None:
            # Still traced: the run starts a new trace, and the audit entry says it was generated.
            trace_id = secrets.token_hex(16)
            traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        else:
            traceparent = header.strip().lower()
        # The sensor's span joins the submitter's trace; the run tag keeps the submitter's context unchanged.
        with tracing.process_span(record.topic, traceparent, agentflow__plan_id=req.plan_id):
            pass
        try:
            run_config = self.run_config(req, version, traceparent)
        except ValueError as exc:
            raise BadRecord(f"inputs rejected by workflow {req.workflow!r}: {exc}") from exc

        self._record_queued(req, version, trace_id, generated, record)
        if req.event_id in self._seen:
            return  # same event twice in one tick: the run_key would drop it anyway
        self._seen.add(req.event_id)
        self.run_requests.append(
            dg.RunRequest(
                run_key=req.event_id,
                job_name=req.workflow,
                run_config=run_config,
                tags={
                    names.TAG_PLAN_ID: req.plan_id,
                    names.TAG_EVENT_ID: req.event_id,
                    names.TAG_WORKFLOW: req.workflow,
                    names.TAG_TENANT: req.tenant,
                    names.TAG_TRACE_ID: trace_id,
                    TAG_TRACEPARENT: traceparent,
                    TAG_VERSION: version,
                    TAG_PRIORITY: str(req.priority),
                    **max_runtime_tags(self.specs.get(req.workflow)),
                },
            )
        )

    def _check_budget(self, req: WorkflowRequest) -> None:
        """An over-budget tenant's new event is dead-lettered (the API answers 429 for the same reason).

        Not deferred: holding the cursor would stall every tenant on the partition until the next UTC
        day. The DLQ keeps the original bytes and headers, so the event can be produced again later.
        A replay of an event that already has a run is let through: its run_key makes it a no-op.
        """
        limit = self.quotas.token_budget(req.tenant)
        if limit <= 0:
            return
        if self._budget is None:
            # No Redis here: the sums are cached in this intake, i.e. read once per tenant per tick.
            self._budget = TokenBudget(None, self.postgres.engine, self.quotas.usage_cache_s)
        verdict = self._budget.check(req.tenant, limit)
        if verdict.allowed or self._known(req.plan_id):
            return
        raise BadRecord(
            f"token budget exceeded for tenant {req.tenant} (used {verdict.used} of {verdict.limit} today); "
            f"the budget resets at 00:00 UTC, in {verdict.retry_after_s} s"
        )

    def _known(self, plan_id: str) -> bool:
        with self.postgres.engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM workflow_runs WHERE plan_id = :p"), {"p": plan_id}
            ).first()
        return found is not None

    def _checked_inputs(self, req: WorkflowRequest) -> tuple[WorkflowRequest, str]:
        """Validate inputs against the spec (when known) and move large ones to the object store."""
        spec = self.specs.get(req.workflow)
        version = spec.version if spec is not None else self.jobs[req.workflow].tags.get(TAG_VERSION, "0")
        inputs = req.inputs
        if req.inputs_ref is not None:
            if req.inputs:
                raise BadRecord("schema violation: send either inputs or inputs_ref, not both")
            inputs = self._load_ref(req.inputs_ref)
        if spec is not None:
            try:
                inputs = spec.validate_inputs(inputs)
            except ValueError as exc:
                raise BadRecord(f"inputs do not match workflow {req.workflow!r}: {exc}") from exc
        if req.inputs_ref is not None:
            return req, version
        blob = json.dumps(inputs, separators=(",", ":")).encode()
        if len(blob) <= self.settings.inline_input_limit:
            return req.model_copy(update={"inputs": inputs}), version
        key = inputs_key(req.plan_id)
        self.object_store.store.put(names.BUCKET_ARTIFACTS, key, blob, "application/json")
        return req.model_copy(update={"inputs": {}, "inputs_ref": key}), version

    def _load_ref(self, key: str) -> dict[str, Any]:
        try:
            data = json.loads(self.object_store.store.get(names.BUCKET_ARTIFACTS, key))
        except ObjectNotFound as exc:
            raise BadRecord(f"inputs_ref {key!r} not found in bucket {names.BUCKET_ARTIFACTS}") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRecord(f"inputs_ref {key!r} is not a JSON object: {exc}") from exc
        if not isinstance(data, dict):
            raise BadRecord(f"inputs_ref {key!r} is not a JSON object")
        return data

    def _record_queued(
        self, req: WorkflowRequest, version: str, trace_id: str, generated: bool, record: KafkaRecord
    ) -> None:
        """Insert the workflow_runs row and its audit entry once per event_id (replays are no-ops)."""
        stored_inputs = {"inputs_ref": req.inputs_ref} if req.inputs_ref else req.inputs
        with self.postgres.engine.begin() as conn:
            inserted = conn.execute(
                sa.text(
                    "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, "
                    "trace_id, "
                    "inputs, submitted_at) VALUES (:plan, :event, :wf, :ver, :tenant, 'queued', :trace, "
                    "CAST(:inputs AS jsonb), :submitted) ON CONFLICT DO NOTHING"
                ),
                {
                    "plan": req.plan_id,
                    "event": req.event_id,
                    "wf": req.workflow,
                    "ver": version,
                    "tenant": req.tenant,
                    "trace": trace_id,
                    "inputs": json.dumps(stored_inputs, default=str),
                    "submitted": req.submitted_at,
                },
            ).rowcount
            detail = {
                "workflow": req.workflow,
                "version": version,
                "tenant": req.tenant,
                "trace_id": trace_id,
                "trace_generated": generated,
                "source": f"{record.topic}[{record.partition}]@{record.offset}",
            }
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (plan_id, actor, action, subject, detail) "
                    "VALUES (:p, :a, :act, :s, CAST(:d AS jsonb))"
                ),
                {
                    "p": req.plan_id,
                    "a": self.actor,
                    "act": "run.queued" if inserted else "request.duplicate",
                    "s": req.event_id,
                    "d": json.dumps(detail),
                },
            )


def make_workflow_request_sensor(
    jobs: Sequence[dg.JobDefinition],
    specs: Mapping[str, WorkflowInfo] | None = None,
    *,
    run_config: RunConfigFn = compiler_run_config,
    reader_config: ReaderConfig | None = None,
    settings: Settings | None = None,
    quotas: TenantQuotas | None = None,
    name: str = "workflow_request_sensor",
    minimum_interval_seconds: int = 1,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that starts one run of the named workflow job per `agentflow.workflow.requests` event."""
    by_name = {job.name: job for job in jobs}
    known_specs = dict(specs or {})

    @dg.sensor(
        name=name,
        jobs=list(jobs),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Kafka {names.TOPIC_REQUESTS} -> runs (run_key = event_id); bad events -> .dlq",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        postgres: PostgresResource,
        object_store: ObjectStoreResource,
    ) -> dg.SensorResult:
        active = settings or get_settings()
        intake = RequestIntake(
            jobs=by_name,
            specs=known_specs,
            run_config=run_config,
            settings=active,
            postgres=postgres,
            object_store=object_store,
            quotas=quotas or TenantQuotas(),
            actor=name,
        )
        tracing.setup_tracing("agentflow-sensors")
        reader = KafkaTopicReader(
            names.TOPIC_REQUESTS, kafka.consumer, kafka.producer, context.log,
            reader_config or ReaderConfig(wait_seconds=active.request_poll_seconds),
            **dead_letter_hooks(postgres, name),
        )  # fmt: skip
        result = reader.read(context.cursor, intake.handle)
        # Only ticks that did something log: a tick's log is stored by the compute log manager (an S3
        # upload per tick on the stack), and an idle request sensor ticks every second or so.
        if result.handled or result.dead_lettered or not result.caught_up:
            context.log.info(
                f"{result.handled} requests -> {len(intake.run_requests)} run requests, "
                f"{result.dead_lettered} dead-lettered, caught up: {result.caught_up}"
            )
        return dg.SensorResult(run_requests=intake.run_requests, cursor=result.cursor)

    return _sensor
