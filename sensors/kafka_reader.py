"""Cursor-based Kafka reading for every Kafka sensor: assign + seek, never skip, bad records to `.dlq`."""

from __future__ import annotations

import hashlib
import json
import time
from base64 import b64encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import OffsetOutOfRangeError
from pydantic import BaseModel, ValidationError

from agentflow_dagster.events import DeadLetter

ResetPolicy = Literal["reset_to_earliest", "skip_to_latest", "fail"]
DLQ_REASON_HEADER = "agentflow-dlq-reason"


class Log(Protocol):
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


class BadRecord(Exception):
    """Raised by a record handler: the record goes to the dead-letter topic with this reason."""


class CursorResetError(RuntimeError):
    """The cursor does not match the broker's log and the reset policy is `fail`."""


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed record, decoupled from kafka-python's types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]
    timestamp: int

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    @property
    def fingerprint(self) -> str:
        """Identifies this record, so a recreated log holding other records at the same offset is noticed."""
        digest = hashlib.sha256(str(self.timestamp).encode() + b"\0" + (self.key or b"") + b"\0" + self.value)
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ReaderConfig:
    """Tick budget and the knobs that make "caught up" trustworthy on brokers with odd watermarks."""

    max_seconds: float = 20.0
    max_records: int = 500
    on_reset: ResetPolicy = "reset_to_earliest"
    poll_timeout_ms: int = 100
    # The poll that only confirms the end of partitions that delivered since their seek (their fetch is
    # running, see `_idle`): a handled event's tick ends this much after it, not a whole poll timeout.
    confirm_poll_ms: int = 20
    # A partition is caught up only after this many polls and this much time without records since its
    # last record or seek: the first poll after a seek often returns nothing while the fetch is in flight.
    idle_polls: int = 3
    idle_seconds: float = 0.3
    # Before declaring a reset, the record before the cursor is sought again and waited for this long.
    confirm_seconds: float = 1.5
    # Long poll: a tick that has caught up without reading anything keeps polling for new records
    # until this many seconds after its start, and returns as soon as what arrived is handled (and the
    # partitions are idle again). 0 = return once caught up. Dagster spaces sensor ticks by at least
    # 1 s from the end of the previous tick; polling inside the tick sees an event within one poll.
    wait_seconds: float = 0.0
    dlq_send_timeout: float = 10.0


class TopicCursor(BaseModel):
    """The sensor cursor: next offset per partition, and the fingerprint of the record before it."""

    offsets: dict[int, int] = {}
    marks: dict[int, str] = {}

    @classmethod
    def parse(cls, raw: str | None) -> TopicCursor:
        if not raw:
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ValueError(
                f"sensor cursor {raw[:200]!r} is not a Kafka cursor ({exc.errors()[0]['msg']}); "
                'clear it in the UI or set it to {"offsets": {"0": <next offset>, ...}}'
            ) from exc

    def dump(self) -> str:
        return json.dumps(
            {
                "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
                "marks": {str(p): m for p, m in sorted(self.marks.items())},
            },
            separators=(",", ":"),
        )


@dataclass
class ReadResult:
    """What one tick read: the new cursor and what happened on the way."""

    cursor: str
    handled: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    resets: dict[int, str] = field(default_factory=dict)
    caught_up: bool = False
    error: Exception | None = None


@dataclass(eq=False)
class _Partition:
    tp: TopicPartition
    next: int  # the cursor: next offset to hand to the handler
    mark: str | None  # fingerprint of the record at next - 1
    state: Literal["verify", "read", "skip"]
    empty_polls: int = 0
    last_activity: float = 0.0
    confirm_until: float | None = None
    # Delivered a record since its last seek: its fetch is running, so one empty poll means caught up.
    live: bool = False


class KafkaTopicReader:
    """Reads one topic from a cursor within a tick budget; the returned cursor only covers handled records."""

    def __init__(
        self,
        topic: str,
        consumer_factory: Callable[[], KafkaConsumer],
        producer_factory: Callable[[], KafkaProducer],
        log: Log,
        config: ReaderConfig | None = None,
        dlq_topic: str | None = None,
        on_dead_letter: Callable[[KafkaRecord, str, str], None] | None = None,
        already_dead_lettered: Callable[[KafkaRecord], bool] | None = None,
    ):
        self.topic = topic
        # Called with (record, reason, dlq topic) once the letter is acked: the durable count behind /metrics.
        self.on_dead_letter = on_dead_letter
        # Asked before a letter is written: True means an earlier tick wrote (and recorded) it already.
        self.already_dead_lettered = already_dead_lettered
        self.dlq_topic = dlq_topic or f"{topic}.dlq"
        self.config = config or ReaderConfig()
        self.log = log
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._producer: KafkaProducer | None = None

    def read(self, cursor: str | None, handle: Callable[[KafkaRecord], None]) -> ReadResult:
        """Hand records after `cursor` to `handle` in offset order per partition.

        `handle` raises BadRecord to dead-letter a record; any other exception stops the tick with the
        cursor just before that record (reported in `ReadResult.error`), so the record is retried next tick.
        """
        state = TopicCursor.parse(cursor)
        consumer = self._consumer_factory()
        try:
            return self._read(consumer, state, handle)
        finally:
            consumer.close()
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

    def _read(
        self, consumer: KafkaConsumer, state: TopicCursor, handle: Callable[[KafkaRecord], None]
    ) -> ReadResult:
        cfg = self.config
        ids = consumer.partitions_for_topic(self.topic)
        if not ids:
            self.log.warning(f"topic {self.topic} does not exist on the broker yet; cursor kept as it is")
            return ReadResult(cursor=state.dump())
        for gone in sorted(set(state.offsets) - set(ids)):
            self.log.warning(f"{self.topic}[{gone}] no longer exists (topic recreated?); dropped from cursor")
        tps = [TopicPartition(self.topic, p) for p in sorted(ids)]
        consumer.assign(tps)
        earliest: dict[TopicPartition, int] = consumer.beginning_offsets(tps)
        now = time.monotonic()
        parts: dict[int, _Partition] = {}
        for tp in tps:
            parts[tp.partition] = part = self._start(tp, state, earliest[tp], now)
            consumer.seek(tp, part.next - 1 if part.state == "verify" else part.next)

        result = ReadResult(cursor="")
        deadline = now + cfg.max_seconds
        wait_until = now + min(cfg.wait_seconds, cfg.max_seconds)
        reported_end: dict[TopicPartition, int] | None = None
        while True:
            now = time.monotonic()
            budget = cfg.max_records - result.handled - result.dead_lettered
            if budget <= 0 or now >= deadline or result.error is not None:
                break
            waiting = [p for p in parts.values() if not self._idle(consumer, p, now)]
            suspects = [p for p in parts.values() if p.state == "verify" and p not in waiting]
            if suspects:
                # The record before the cursor did not come back: only a short log explains that, but
                # Tansu under-reports end offsets, so a low watermark alone must not trigger a reset.
                if reported_end is None:
                    reported_end = consumer.end_offsets(tps)
                for p in suspects:
                    known_end = max(reported_end[p.tp], consumer.highwater(p.tp) or 0)
                    if known_end >= p.next:
                        continue  # the log reaches the cursor: nothing new (offset next-1 was not a record)
                    if p.confirm_until is None:
                        p.confirm_until = now + cfg.confirm_seconds
                        self._seek(consumer, p, p.next - 1, now)
                        waiting.append(p)
                    elif now >= p.confirm_until:
                        why = (
                            f"no record at offset {p.next - 1} after a second seek; "
                            f"log starts at {earliest[p.tp]}, broker reports end {known_end}"
                        )
                        self._reset(consumer, p, why, result, now)
                        waiting.append(p)
                    else:
                        waiting.append(p)
            if not waiting:
                result.caught_up = True
                if result.handled or result.dead_lettered or result.skipped or now >= wait_until:
                    break
            else:
                result.caught_up = False
            try:
                confirming = bool(waiting) and all(p.live for p in waiting)
                timeout_ms = cfg.confirm_poll_ms if confirming else cfg.poll_timeout_ms
                batch = consumer.poll(timeout_ms=timeout_ms, max_records=min(budget, 500))
            except OffsetOutOfRangeError as exc:
                # The broker itself says the position is outside the log: confirmed, no second look needed.
                for tp, offset in dict(exc.args[0]).items():
                    p = parts[tp.partition]
                    self._reset(consumer, p, f"broker says offset {offset} is out of range", result, now)
                continue
            polled_at = time.monotonic()
            fed: set[int] = set()
            for tp, messages in batch.items():
                p = parts[tp.partition]
                fed.add(tp.partition)
                p.empty_polls = 0
                p.last_activity = polled_at
                p.live = bool(messages)
                for message in messages:
                    if not self._consume(consumer, p, self._record(message), handle, result, polled_at):
                        break  # the partition was re-sought (or the tick stopped): the rest is stale
            for p in parts.values():
                if p.tp.partition not in fed:
                    p.empty_polls += 1

        final = TopicCursor(
            offsets={n: p.next for n, p in parts.items()},
            marks={n: p.mark for n, p in parts.items() if p.mark is not None},
        )
        result.cursor = final.dump()
        return result

    def _start(self, tp: TopicPartition, state: TopicCursor, earliest: int, now: float) -> _Partition:
        n = tp.partition
        cursor = state.offsets.get(n)
        if cursor is None:
            self.log.info(
                f"{self.topic}[{n}] is new to this cursor: reading from the earliest offset {earliest}"
            )
            return _Partition(tp, earliest, None, "read", last_activity=now)
        if cursor < earliest:
            self.log.warning(
                f"{self.topic}[{n}]: offsets {cursor}..{earliest - 1} were deleted by retention before they "
                f"were read; continuing at {earliest}"
            )
            return _Partition(tp, earliest, None, "read", last_activity=now)
        if cursor == earliest:
            return _Partition(tp, cursor, None, "read", last_activity=now)
        # Re-read the record before the cursor: proves the log is the one this cursor was built on.
        return _Partition(tp, cursor, state.marks.get(n), "verify", last_activity=now)

    def _idle(self, consumer: KafkaConsumer, p: _Partition, now: float) -> bool:
        cfg = self.config
        if consumer.highwater(p.tp) is None:
            return False
        if p.live:
            # The "first poll after a seek returns nothing" caution is for a fetch not yet running; this
            # partition delivered since its seek, so an empty poll is the end (a handled event's tick
            # returns ~0.3 s sooner).
            return p.empty_polls >= 1
        return p.empty_polls >= cfg.idle_polls and now - p.last_activity >= cfg.idle_seconds

    def _seek(self, consumer: KafkaConsumer, p: _Partition, offset: int, now: float) -> None:
        consumer.seek(p.tp, offset)
        p.empty_polls = 0
        p.last_activity = now
        p.live = False

    def _reset(
        self, consumer: KafkaConsumer, p: _Partition, why: str, result: ReadResult, now: float
    ) -> None:
        policy = self.config.on_reset
        where = f"{self.topic}[{p.tp.partition}]"
        message = f"{where}: cursor {p.next} does not match the broker's log ({why}); policy {policy}"
        if policy == "fail":
            self.log.error(message)
            raise CursorResetError(
                f"{message}. The broker was restarted or the topic recreated: set the reader's on_reset to "
                "reset_to_earliest or skip_to_latest, or clear the sensor cursor in the UI."
            )
        earliest = consumer.beginning_offsets([p.tp])[p.tp]
        if policy == "reset_to_earliest":
            start, p.state = earliest, "read"
        else:
            # Tansu's end offset can be low, never high: records past it are drained and skipped too.
            start, p.state = max(earliest, consumer.end_offsets([p.tp])[p.tp]), "skip"
        self.log.warning(f"{message}: continuing at offset {start}")
        result.resets[p.tp.partition] = why
        p.next, p.mark, p.confirm_until = start, None, None
        self._seek(consumer, p, start, now)

    def _consume(
        self,
        consumer: KafkaConsumer,
        p: _Partition,
        record: KafkaRecord,
        handle: Callable[[KafkaRecord], None],
        result: ReadResult,
        now: float,
    ) -> bool:
        """Process one record; False when the rest of this partition's batch must be dropped."""
        if record.offset < p.next - (1 if p.state == "verify" else 0):
            return True  # before our position: a stale fetch
        if p.state == "verify":
            if record.offset == p.next - 1:
                if p.mark is not None and record.fingerprint != p.mark:
                    why = f"the record at offset {record.offset} is not the one this cursor consumed"
                    self._reset(consumer, p, why, result, now)
                    return False
                p.state, p.confirm_until = "read", None
                return True
            p.state, p.confirm_until = "read", None  # offset next-1 is a gap (compaction, control record)
        if p.state == "skip":
            p.next, p.mark = record.offset + 1, record.fingerprint
            result.skipped += 1
            return True
        if result.handled + result.dead_lettered >= self.config.max_records:
            return False
        try:
            handle(record)
            result.handled += 1
        except BadRecord as bad:
            try:
                if self.already_dead_lettered is not None and self.already_dead_lettered(record):
                    self.log.info(
                        f"{self.topic}[{record.partition}]@{record.offset}: already dead-lettered by a tick "
                        "whose cursor was not saved; not sent again"
                    )
                else:
                    self._dead_letter(record, str(bad))
                    if self.on_dead_letter is not None:
                        self.on_dead_letter(record, str(bad), self.dlq_topic)
            except Exception as exc:
                return self._stop(record, f"could not write to {self.dlq_topic}: {exc}", exc, result)
            result.dead_lettered += 1
        except Exception as exc:
            return self._stop(record, f"{type(exc).__name__}: {exc}", exc, result)
        p.next, p.mark = record.offset + 1, record.fingerprint
        return True

    def _stop(self, record: KafkaRecord, why: str, exc: Exception, result: ReadResult) -> bool:
        self.log.error(
            f"{self.topic}[{record.partition}]@{record.offset}: {why}; stopping this tick, the record is "
            "retried next tick"
        )
        result.error = exc
        return False

    def _dead_letter(self, record: KafkaRecord, reason: str) -> None:
        """Write the record to the DLQ and wait for the ack: the cursor never passes an unwritten letter."""
        letter = DeadLetter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            value_b64=b64encode(record.value).decode(),
            headers={k: v.decode("utf-8", errors="replace") for k, v in record.headers.items()},
        )
        if self._producer is None:
            self._producer = self._producer_factory()
        headers = [*record.headers.items(), (DLQ_REASON_HEADER, reason.encode()[:1000])]
        future = self._producer.send(
            self.dlq_topic, key=record.key, value=letter.model_dump_json().encode(), headers=headers
        )
        future.get(timeout=self.config.dlq_send_timeout)
        self._producer.flush(timeout=self.config.dlq_send_timeout)
        self.log.warning(f"{self.topic}[{record.partition}]@{record.offset} -> {self.dlq_topic}: {reason}")

    @staticmethod
    def _record(message: Any) -> KafkaRecord:
        return KafkaRecord(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value or b"",
            headers={k: v or b"" for k, v in (message.headers or [])},
            timestamp=message.timestamp,
        )
