"""The shipped-workflow benchmark's pure parts: minute buckets, the rate verdict, CPU per workflow,
memory trend, the one-run-per-event check and the scripted LLM answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from pydantic import BaseModel  # noqa: E402
from shipped_bench import (  # noqa: E402
    QUESTIONS,
    SUPPORT_KB,
    cpu_per_workflow,
    memory_trend,
    per_minute,
    rate_holds,
    run_check,
    scripted_answer,
)

from agentflow_dagster.agents.schemas import Plan, Route  # noqa: E402


def test_per_minute_buckets_from_start_to_end() -> None:
    start = 1000.0
    times = [999.0, 1000.0, 1059.9, 1060.0, 1179.0, 1200.0]
    # 999 is before the start: not counted; the last bucket may be partial (it ends at `end`).
    assert per_minute(times, start, 1200.0) == [2, 1, 1, 1]
    assert per_minute(times, start, 1180.0) == [2, 1, 1]
    assert per_minute([], start, start) == [0]


def test_rate_holds_judges_full_minutes_after_the_first() -> None:
    assert rate_holds([50, 60, 58, 61, 20], rate=60, load_minutes=4)
    assert not rate_holds([60, 60, 40, 60], rate=60, load_minutes=4)
    # The drain bucket after the load does not count; one minute is judged on its own.
    assert rate_holds([29, 5], rate=30, load_minutes=1)
    assert not rate_holds([20, 10], rate=30, load_minutes=1)


def test_cpu_per_workflow_sums_only_the_given_groups() -> None:
    resources = {
        "daemon": {"cpu_s": 30.0},
        "postgres": {"cpu_s": 10.0},
        "memory only": {"cpu_s": 25.0},
        "machine": {"cpu_cores": 1.5},
    }
    out = cpu_per_workflow(resources, ["daemon", "postgres", "absent"], 20)
    assert out == {"daemon": 1.5, "postgres": 0.5, "total": 2.0}


def _sample(at: float, mib: float) -> dict:
    return {"at": at, "groups": {"g": {"mem_bytes": mib * 2**20}}}


def test_memory_trend_compares_first_and_last_tenth() -> None:
    samples = [_sample(t, 100 + (50 if t >= 90 else 0)) for t in range(100)]
    trend = memory_trend(samples, "g", 0, 99)
    assert trend == {"first_mib": 100.0, "last_mib": 150.0, "change_pct": 50.0}
    assert memory_trend(samples, "g", 200, 300) == {}


def test_run_check_names_missing_and_doubled_runs() -> None:
    check = run_check(["a", "b", "c"], ["a", "b", "b", "x"])
    assert check == {"runs": 3, "missing_run": ["c"], "duplicate_run": {"b": 2}}


def _request(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    return {
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "ticket 7"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema}},
    }


def test_scripted_answers_validate_and_point_at_the_corpus() -> None:
    route = Route.model_validate_json(scripted_answer(_request(Route)) or "")
    assert route.collection == SUPPORT_KB and route.search_query in QUESTIONS
    plan = Plan.model_validate_json(scripted_answer(_request(Plan)) or "")
    assert len(plan.sub_questions) == 2 and set(plan.sub_questions) <= set(QUESTIONS)
    assert scripted_answer({"messages": []}) is None
    assert json.loads(scripted_answer(_request(Route)) or "") == route.model_dump()
