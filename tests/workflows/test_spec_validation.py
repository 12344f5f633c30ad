"""Spec validation: every error kind names the file, the task and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentflow_dagster.workflows.loader import SPECS_DIR, load_spec_file, load_specs
from agentflow_dagster.workflows.spec import InputError, SpecError

BASE = {
    "name": "wf_test",
    "version": "1.0.0",
    "inputs": {"topic": {"type": "string", "max_length": 50}},
    "tasks": [
        {"task_id": "plan", "agent": "planner", "inputs": {"topic": "$request.topic"}},
        {
            "task_id": "research",
            "agent": "researcher",
            "depends_on": ["plan"],
            "fan_out": {"over": "$tasks.plan.sub_questions"},
            "inputs": {"question": "$item"},
        },
        {
            "task_id": "write",
            "agent": "writer",
            "depends_on": ["research"],
            "inputs": {"notes": "$tasks.research"},
        },
    ],
}


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "wf_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _mutated(mutate) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    mutate(spec)
    return spec


def test_shipped_specs_load() -> None:
    specs = load_specs()
    assert {"research_report", "support_triage", "summarize_with_fallback"} <= set(specs)
    assert any(t.fan_out for t in specs["research_report"].tasks)
    assert any(t.fallback_agent for t in specs["summarize_with_fallback"].tasks)
    assert all(s.source_file.startswith(str(SPECS_DIR)) for s in specs.values())


def test_base_spec_is_valid(tmp_path: Path) -> None:
    spec = load_spec_file(_write(tmp_path, BASE))
    assert spec.topological_order() == ["plan", "research", "write"]


def _set(path: list, value):
    def mutate(spec: dict) -> None:
        target = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


CASES = {
    "cycle": (
        _set(["tasks", 0, "depends_on"], ["write"]),
        "plan",
        "depends_on",
        "plan -> write -> research -> plan",
    ),
    "self_cycle": (
        _set(["tasks", 2, "depends_on"], ["research", "write"]),
        "write",
        "depends_on",
        "cycle: write -> write",
    ),
    "unknown_agent": (_set(["tasks", 0, "agent"], "astrologer"), "plan", "agent", "unknown agent"),
    "unknown_fallback": (
        _set(["tasks", 0, "fallback_agent"], "nobody"),
        "plan",
        "fallback_agent",
        "unknown agent",
    ),
    "fallback_schema": (
        _set(["tasks", 0, "fallback_agent"], "writer"),
        "plan",
        "fallback_agent",
        "same schema",
    ),
    "unknown_request_input": (
        _set(["tasks", 0, "inputs", "topic"], "$request.subject"),
        "plan",
        "inputs.topic",
        "not a declared input",
    ),
    "unknown_task_ref": (
        _set(["tasks", 2, "inputs", "notes"], "$tasks.ghost"),
        "write",
        "inputs.notes",
        "unknown task",
    ),
    "ref_not_in_depends_on": (
        _set(["tasks", 2, "inputs", "outline"], "$tasks.plan.outline"),
        "write",
        "inputs.outline",
        "add it to depends_on",
    ),
    "unknown_output_field": (
        _set(["tasks", 1, "inputs", "topic"], "$tasks.plan.subject"),
        "research",
        "inputs.topic",
        "outputs no field",
    ),
    "bad_ref_syntax": (
        _set(["tasks", 0, "inputs", "topic"], "$request"),
        "plan",
        "inputs.topic",
        "not a declared input",
    ),
    "unknown_depends_on": (
        _set(["tasks", 1, "depends_on"], ["plan", "nothing"]),
        "research",
        "depends_on[1]",
        "unknown task",
    ),
    "duplicate_id": (_set(["tasks", 2, "task_id"], "plan"), "plan", "task_id", "duplicate"),
    "reserved_id": (_set(["tasks", 0, "task_id"], "request"), "request", "task_id", "reserved"),
    "negative_retries": (
        _set(["tasks", 0, "retry"], {"max_retries": -1}),
        "plan",
        "retry.max_retries",
        "greater than or equal",
    ),
    "bad_backoff": (
        _set(["tasks", 0, "retry"], {"backoff": "fibonacci"}),
        "plan",
        "retry.backoff",
        "exponential",
    ),
    "negative_delay": (
        _set(["tasks", 0, "retry"], {"delay_s": -2}),
        "plan",
        "retry.delay_s",
        "greater than or equal",
    ),
    "unknown_task_field": (_set(["tasks", 0, "retries"], 3), "plan", "retries", "Extra inputs"),
    "item_without_fan_out": (
        _set(["tasks", 0, "inputs", "topic"], "$item"),
        "plan",
        "inputs.topic",
        "fan_out",
    ),
    "fan_out_not_list": (
        _set(["tasks", 1, "fan_out"], {"over": "$tasks.plan.sub_questions_x"}),
        "research",
        "fan_out.over",
        "outputs no field",
    ),
    "retrieval_not_allowed": (
        _set(["tasks", 0, "retrieval"], {"collection": "docs", "query": "$request.topic"}),
        "plan",
        "retrieval",
        "may not use retrieval",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_names_file_task_and_field(tmp_path: Path, case: str) -> None:
    mutate, task, field, message = CASES[case]
    path = _write(tmp_path, _mutated(mutate))
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    err = info.value
    assert (err.file, err.task, err.field) == (str(path), task, field), str(err)
    assert message in str(err)
    assert str(path) in str(err) and repr(task) in str(err) and repr(field) in str(err)


def test_error_for_undeclared_input_type(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutated(_set(["inputs", "topic"], {"type": "text"})))
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert info.value.task is None and info.value.field == "inputs.topic.type"


def test_error_for_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        load_spec_file(path)
    assert info.value.file == str(path)


def test_duplicate_workflow_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(SpecError, match="also defined in") as info:
        load_specs(tmp_path)
    assert info.value.field == "name"


def test_validate_inputs() -> None:
    spec = load_specs()["support_triage"]
    assert spec.validate_inputs({"message": "hi"}) == {"message": "hi", "customer_tier": "standard"}
    with pytest.raises(InputError, match="required input 'message'"):
        spec.validate_inputs({})
    with pytest.raises(InputError, match="undeclared inputs"):
        spec.validate_inputs({"message": "hi", "extra": 1})
    with pytest.raises(InputError, match="must be string"):
        spec.validate_inputs({"message": 42})
    with pytest.raises(InputError, match="max_length is 8000"):
        spec.validate_inputs({"message": "x" * 8001})


def test_spec_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    first = load_spec_file(_write(tmp_path, BASE)).spec_hash
    assert load_spec_file(_write(tmp_path, BASE)).spec_hash == first
    changed = _mutated(_set(["tasks", 0, "timeout_s"], 30))
    assert load_spec_file(_write(tmp_path, changed)).spec_hash != first
