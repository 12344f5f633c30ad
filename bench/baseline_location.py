"""Bare-Dagster baseline: a minimal Kafka sensor -> one run per event of a 3-op job with fixed sleeps.

Default run launcher and the in-process executor for the chain (BENCH_BASELINE_EXECUTOR=multiprocess:
Dagster's default executor, one process per op); the sensor ticks every 1 s like the platform's request
sensor; no idempotency store, history rows, tracing or LLM client: only Dagster and Kafka.
"""

import json
import os
import time

import dagster as dg
from kafka import KafkaConsumer, TopicPartition

TOPIC = "bench.baseline.requests"
SLEEP_S = float(os.environ.get("BENCH_TASK_SLEEP_S", "0.2"))


def _task(name: str) -> dg.OpDefinition:
    @dg.op(name=name)
    def task(upstream: dict | None = None) -> dict:
        time.sleep(SLEEP_S)  # stands in for one LLM call of the same latency
        return {"task": name, "upstream": upstream}

    return task


step_a, step_b, step_c = _task("classify"), _task("summarize"), _task("review")
executor = None if os.environ.get("BENCH_BASELINE_EXECUTOR") == "multiprocess" else dg.in_process_executor


@dg.job(executor_def=executor)
def baseline_three_step() -> None:
    """Three sleeps in a chain."""
    step_c(step_b(step_a()))


@dg.sensor(job=baseline_three_step, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def baseline_kafka_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Assign + seek from the cursor (next offset per partition), poll until empty, run_key = event_id."""
    offsets: dict[str, int] = json.loads(context.cursor or "{}")
    consumer = KafkaConsumer(
        bootstrap_servers=os.environ["AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS"],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    requests: list[dg.RunRequest] = []
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or [])]
        consumer.assign(tps)
        for tp in tps:
            if str(tp.partition) in offsets:
                consumer.seek(tp, offsets[str(tp.partition)])
        deadline = time.monotonic() + 20
        empty = 0
        while empty < 3 and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            empty = 0 if batch else empty + 1
            for tp, messages in batch.items():
                for message in messages:
                    event = json.loads(message.value)
                    requests.append(
                        dg.RunRequest(
                            run_key=event["event_id"],
                            tags={"bench/event_id": event["event_id"], "bench/tenant": event["tenant"]},
                        )
                    )
                    offsets[str(tp.partition)] = message.offset + 1
    finally:
        consumer.close()
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(offsets))


defs = dg.Definitions(jobs=[baseline_three_step], sensors=[baseline_kafka_sensor])
