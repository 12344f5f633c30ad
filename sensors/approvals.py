"""`agentflow.workflow.approvals` -> decisions on approval gates; closed gates -> resume runs; timeouts.

Each tick: record the decision events after the cursor (once per event_id; bad events to the `.dlq`),
reject or escalate gates past their deadline, then request a resume run (run_key = the approval's
event_id) for every closed gate whose run does not exist yet. The last step reads Postgres, not the
topic, so a tick that recorded a decision but died before its run was requested loses nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import RUN_KEY_TAG
from pydantic import ValidationError

from agentflow_dagster import names
from agentflow_dagster.events import ApprovalDecision, WorkflowRequest
from agentflow_dagster.settings import Settings, get_settings
from agentflow_dagster.tools.executor import task_of_gate
from agentflow_dagster.workflows.spec import WorkflowSpec
from ops import approvals
from resources.kafka import KafkaResource
from resources.postgres import PostgresResource
from sensors.kafka_reader import BadRecord, KafkaRecord, KafkaTopicReader, Log, ReaderConfig
from sensors.workflow_requests import (
    TAG_PRIORITY,
    TAG_TRACEPARENT,
    TAG_VERSION,
    compiler_run_config,
    dead_letter_hooks,
    trace_id_from,
)

DLQ_TOPIC = names.TOPIC_APPROVALS_DLQ
TAG_RESUMED_FROM = "agentflow/resumed_from"
TAG_APPROVAL = "agentflow/approval"


@dataclass
class ApprovalIntake:
    """Checks decision events against their plan and spec, and records them; BadRecord for bad ones."""

    specs: Mapping[str, WorkflowSpec]
    postgres: PostgresResource
    settings: Settings
    actor: str = "workflow_approval_sensor"
    outcomes: dict[str, int] = field(default_factory=dict)

    def handle(self, record: KafkaRecord) -> None:
        if len(record.value) > self.settings.max_event_bytes:
            raise BadRecord(
                f"oversized: {len(record.value)} bytes > max_event_bytes {self.settings.max_event_bytes}"
            )
        try:
            event = ApprovalDecision.model_validate_json(record.value)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRecord(f"not an ApprovalDecision: {errors}") from exc
        workflow, tenant = self._plan(event.plan_id)
        if tenant != event.tenant:
            raise BadRecord(f"plan {event.plan_id} belongs to tenant {tenant!r}, not {event.tenant!r}")
        spec = self.specs.get(workflow)
        if spec is None:
            raise BadRecord(
                f"plan {event.plan_id} runs workflow {workflow!r}, which this code location lacks"
            )
        tool_task = task_of_gate(event.task_id)  # `<task>/tool:<name>:<digest>`: a proposed tool call
        if (tool_task or event.task_id) not in spec.task_ids:
            raise BadRecord(f"workflow {workflow!r} has no task {event.task_id!r}; tasks: {spec.task_ids}")
        if tool_task is None and not spec.task(event.task_id).requires_approval:
            raise BadRecord(f"task {event.task_id!r} of {workflow!r} is not marked requires_approval")
        if tool_task is not None and not self._gate_opened(event.plan_id, event.task_id):
            raise BadRecord(
                f"plan {event.plan_id} proposed no tool call {event.task_id!r}: nothing to decide"
            )
        header = record.header("traceparent")
        decision = approvals.Decision(
            event_id=event.event_id,
            plan_id=event.plan_id,
            task_id=event.task_id,
            decision=event.decision,
            actor=event.actor,
            comment=event.comment,
            tenant=event.tenant,
            decided_at=event.decided_at,
            traceparent=header.strip().lower() if header and trace_id_from(header) else None,
        )
        outcome = approvals.record_decision(self.postgres.engine, decision, self.actor)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _gate_opened(self, plan_id: str, gate_id: str) -> bool:
        """A tool call's gate exists only once a run proposed the call (never decided ahead of it)."""
        with self.postgres.engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM workflow_approvals WHERE plan_id = :p AND task_id = :t"),
                {"p": plan_id, "t": gate_id},
            ).first()
        return found is not None

    def _plan(self, plan_id: str) -> tuple[str, str]:
        """(workflow, tenant) of a plan the request sensor recorded (or the API accepted, before that)."""
        with self.postgres.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT workflow, tenant FROM workflow_runs WHERE plan_id = :p UNION ALL "
                    "SELECT workflow, tenant FROM api_requests WHERE plan_id = :p LIMIT 1"
                ),
                {"p": plan_id},
            ).one_or_none()
        if row is None:
            raise BadRecord(f"unknown plan {plan_id}: no workflow run or accepted request has this plan_id")
        return str(row.workflow), str(row.tenant)


def _request_of(resume: approvals.Resume, spec: WorkflowSpec | None, priority: int) -> WorkflowRequest:
    """The plan's original request, rebuilt from its `workflow_runs` row (inputs inline or by reference)."""
    inputs = dict(resume.inputs or {})
    by_ref = set(inputs) == {"inputs_ref"} and (
        spec is None or "inputs_ref" not in {f.name for f in spec.inputs}
    )
    return WorkflowRequest(
        event_id=resume.event_id,
        workflow=resume.workflow,
        tenant=resume.tenant,
        priority=priority,
        inputs={} if by_ref else inputs,
        inputs_ref=str(inputs["inputs_ref"]) if by_ref else None,
        **({"submitted_at": resume.submitted_at} if resume.submitted_at else {}),
    )


def resume_requests(
    instance: dg.DagsterInstance,
    postgres: PostgresResource,
    jobs: Mapping[str, dg.JobDefinition],
    specs: Mapping[str, WorkflowSpec],
    log: Log,
    actor: str,
) -> list[dg.RunRequest]:
    """A RunRequest per closed gate whose resume run does not exist yet; gates whose run exists are marked."""
    out: list[dg.RunRequest] = []
    done: list[str] = []
    for resume in approvals.unlaunched_resumes(postgres.engine):
        if instance.get_run_ids(dg.RunsFilter(tags={RUN_KEY_TAG: resume.run_key}), limit=1):
            done.append(resume.run_key)
            continue
        if resume.workflow not in jobs:
            log.error(f"plan {resume.plan_id}: workflow {resume.workflow!r} is not in this code location")
            postgres.audit(
                actor, "approval.resume_failed", resume.plan_id, resume.task_id, run_key=resume.run_key,
                error=f"workflow {resume.workflow!r} is not in this code location; resume it by hand",
            )  # fmt: skip
            done.append(resume.run_key)
            continue
        paused = instance.get_run_by_id(resume.waiting_run_id) if resume.waiting_run_id else None
        priority = int(paused.tags.get(TAG_PRIORITY, 0)) if paused is not None else 0
        req = _request_of(resume, specs.get(resume.workflow), priority)
        trace_id = trace_id_from(resume.traceparent) or resume.trace_id or secrets.token_hex(16)
        # The resumed run continues the approver's span (the API's publish), else the plan's trace.
        traceparent = resume.traceparent or f"00-{trace_id}-{secrets.token_hex(8)}-01"
        out.append(
            dg.RunRequest(
                run_key=resume.run_key,
                job_name=resume.workflow,
                run_config=compiler_run_config(req, resume.version, traceparent),
                tags={
                    names.TAG_PLAN_ID: resume.plan_id,
                    names.TAG_EVENT_ID: resume.event_id,
                    names.TAG_WORKFLOW: resume.workflow,
                    names.TAG_TENANT: resume.tenant,
                    names.TAG_TRACE_ID: trace_id,
                    TAG_TRACEPARENT: traceparent,
                    TAG_VERSION: resume.version,
                    TAG_PRIORITY: str(priority),
                    TAG_RESUMED_FROM: resume.waiting_run_id or "",
                    TAG_APPROVAL: f"{resume.task_id}:{resume.decision}",
                },
            )
        )
    approvals.mark_launched(postgres.engine, done)
    return out


def make_approval_sensor(
    jobs: Sequence[dg.JobDefinition],
    specs: Mapping[str, WorkflowSpec],
    *,
    reader_config: ReaderConfig | None = None,
    settings: Settings | None = None,
    name: str = "workflow_approval_sensor",
    minimum_interval_seconds: int = 5,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that applies approval decisions and timeouts and resumes the waiting workflows."""
    by_name = {job.name: job for job in jobs}
    known_specs = dict(specs)
    reader_cfg = reader_config or ReaderConfig()

    @dg.sensor(
        name=name,
        jobs=list(jobs),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Kafka {names.TOPIC_APPROVALS} -> approval decisions; approval timeouts; "
            "resume runs of approved or rejected workflows (run_key = approval event_id)"
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, kafka: KafkaResource, postgres: PostgresResource
    ) -> dg.SensorResult:
        intake = ApprovalIntake(known_specs, postgres, settings or get_settings(), actor=name)
        reader = KafkaTopicReader(
            names.TOPIC_APPROVALS, kafka.consumer, kafka.producer, context.log, reader_cfg,
            dlq_topic=DLQ_TOPIC, **dead_letter_hooks(postgres, name),
        )  # fmt: skip
        result = reader.read(context.cursor, intake.handle)
        expired = approvals.expire_overdue(postgres.engine, name)
        runs = resume_requests(context.instance, postgres, by_name, known_specs, context.log, name)
        summary: dict[str, Any] = {
            "decisions": intake.outcomes,
            "dead_lettered": result.dead_lettered,
            "timeouts": [f"{e.plan_id}/{e.task_id}: {e.action}" for e in expired],
            "resume_runs": [r.run_key for r in runs],
            "caught_up": result.caught_up,
        }
        if any(summary[k] for k in ("decisions", "dead_lettered", "timeouts", "resume_runs")) or not (
            result.caught_up
        ):
            context.log.info(json.dumps(summary))  # idle ticks do not log (one S3 upload per logged tick)
        return dg.SensorResult(run_requests=runs, cursor=result.cursor)

    return _sensor
