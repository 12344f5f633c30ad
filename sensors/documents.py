"""`agentflow.documents` -> a dynamic partition per collection and one rag_index_job run per collection."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg
from pydantic import ValidationError

from agentflow_dagster import names
from agentflow_dagster.events import DocumentEvent
from agentflow_dagster.settings import Settings, get_settings
from resources.kafka import KafkaResource
from resources.object_store import validate_key
from resources.postgres import PostgresResource
from sensors.kafka_reader import BadRecord, KafkaRecord, KafkaTopicReader, ReaderConfig
from sensors.workflow_requests import dead_letter_hooks

TAG_TRIGGER = "agentflow/trigger"
TAG_EVENT_COUNT = "agentflow/event_count"


@dataclass
class DocumentIntake:
    """Validates document events and keeps, per collection, the last event and how many arrived."""

    max_event_bytes: int
    latest: dict[str, DocumentEvent] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def handle(self, record: KafkaRecord) -> None:
        if len(record.value) > self.max_event_bytes:
            raise BadRecord(f"oversized: {len(record.value)} bytes > max_event_bytes {self.max_event_bytes}")
        try:
            event = DocumentEvent.model_validate(json.loads(record.value))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRecord(f"not JSON: {exc}") from exc
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRecord(f"schema violation: {errors}") from exc
        try:
            validate_key(event.key)
        except ValueError as exc:
            raise BadRecord(str(exc)) from exc
        if not event.key.startswith(f"{event.collection}/"):
            raise BadRecord(
                f"key {event.key!r} is outside its collection: documents of {event.collection!r} live under "
                f"{names.BUCKET_DOCUMENTS}/{event.collection}/"
            )
        self.latest[event.collection] = event
        self.counts[event.collection] = self.counts.get(event.collection, 0) + 1

    def run_requests(self) -> list[dg.RunRequest]:
        """One run per collection: the assets are incremental, so one run covers every event before it."""
        return [
            dg.RunRequest(
                run_key=event.event_id,
                partition_key=collection,
                tags={
                    names.TAG_EVENT_ID: event.event_id,
                    TAG_TRIGGER: "event",
                    TAG_EVENT_COUNT: str(self.counts[collection]),
                },
            )
            for collection, event in sorted(self.latest.items())
        ]


def make_document_sensor(
    job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition,
    partitions_name: str,
    *,
    reader_config: ReaderConfig | None = None,
    settings: Settings | None = None,
    name: str = "document_sensor",
    minimum_interval_seconds: int = 5,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that indexes every collection named by new `agentflow.documents` events."""
    reader_cfg = reader_config or ReaderConfig()

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Kafka {names.TOPIC_DOCUMENTS} -> partition per collection + run; bad events -> .dlq",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, kafka: KafkaResource, postgres: PostgresResource
    ) -> dg.SensorResult:
        intake = DocumentIntake(max_event_bytes=(settings or get_settings()).max_event_bytes)
        reader = KafkaTopicReader(
            names.TOPIC_DOCUMENTS,
            kafka.consumer,
            kafka.producer,
            context.log,
            reader_cfg,
            dlq_topic=names.TOPIC_DOCUMENTS_DLQ,
            # One audit row per dead letter: `agentflow_dlq_events_total{topic="agentflow.documents"}`.
            **dead_letter_hooks(postgres, name),
        )
        result = reader.read(context.cursor, intake.handle)
        new = [
            c for c in sorted(intake.latest) if not context.instance.has_dynamic_partition(partitions_name, c)
        ]
        context.log.info(
            f"{result.handled} document events -> {len(intake.latest)} collections ({len(new)} new), "
            f"{result.dead_lettered} dead-lettered, caught up: {result.caught_up}"
        )
        return dg.SensorResult(
            run_requests=intake.run_requests(),
            cursor=result.cursor,
            dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest(partitions_name, new)] if new else [],
        )

    return _sensor
