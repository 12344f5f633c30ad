"""User projects: init, validate, every validation error naming file and field, models, offline honesty."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflow_dagster.agents.roles import AgentRole, output_schema
from agentflow_dagster.cli import main
from agentflow_dagster.llm.offline import OfflineCannotJudge, OfflineExtractiveProvider, compose
from agentflow_dagster.llm.types import OFFLINE_MODEL, ChatRequest
from agentflow_dagster.project import EXAMPLE_PROJECT, ProjectError, load_project
from agentflow_dagster.project import loader as project_loader
from agentflow_dagster.project.scaffold import init_project
from agentflow_dagster.workflows.spec import SpecError
from resources.llm import OPENAI_URL, LLMResource


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    init_project(root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def test_init_creates_a_project_that_validates(project: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["validate", str(project), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["agents"] == ["responder", "triager"]
    assert summary["tools"] == ["lookup_order", "notify_team"]
    assert summary["workflows"] == {"customer_request": "1.0.0"}
    again = runner.invoke(main, ["init", str(project)])
    assert again.exit_code != 0 and "not empty" in again.output


def test_the_shipped_workflows_are_an_example_project() -> None:
    shipped = load_project(EXAMPLE_PROJECT)
    assert set(shipped.workflows) == {
        "research_report", "support_triage", "summarize_with_fallback", "publish_with_approval"
    }  # fmt: skip
    assert shipped.agents["writer"].max_output_tokens == 4096
    assert shipped.agents["drafter"].allows("retrieval") and not shipped.agents["classifier"].tools


def test_templates_are_checked_without_langchain_and_read_what_langchain_reads(project: Path) -> None:
    """Loading a project (validate, status) checks each template itself; the ChatPromptTemplate built
    later reads the same variables, and a template LangChain refuses is refused at load time."""
    import subprocess
    import sys

    from agentflow_dagster.agents.roles import FramedPrompt
    from agentflow_dagster.project.loader import FRAME_VARIABLES

    probe = "import sys; from agentflow_dagster.project import load_project; load_project(sys.argv[1]); "
    probe += "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'langsmith'))))"
    for root in (project, EXAMPLE_PROJECT):
        done = subprocess.run([sys.executable, "-c", probe, str(root)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
        for role in load_project(root).agents.values():
            assert isinstance(role.prompt, FramedPrompt)
            built = set(role.prompt.build().input_variables) - FRAME_VARIABLES
            assert built == role.template_variables, (root, role.name)
    jinja = FramedPrompt("sys {{ not a var }}", "Hi {{ name }} {% if tier %}{{ tier }}{% endif %}", "jinja2")
    assert jinja.variables() - FRAME_VARIABLES == {"name", "tier"}
    assert set(jinja.build().input_variables) - FRAME_VARIABLES == {"name", "tier"}
    for human, fmt in (("Hi {name", "f-string"), ("Hi {% if x %}", "jinja2"), ("{a.b}", "f-string")):
        with pytest.raises(ValueError):
            FramedPrompt("sys", human, fmt).variables()


def test_a_project_agent_reads_its_template_variables(project: Path) -> None:
    loaded = load_project(project)
    triager = loaded.agents["triager"]
    assert triager.template_variables == {"message", "tier"}
    messages = triager.prompt.format_messages(
        message="Where is A-1002?", tier="gold", inputs="{}", retrieved="(none)", schema="{}"
    )
    assert "Where is A-1002?" in str(messages[1].content) and "gold" in str(messages[1].content)
    # The JSON Schema output is enforced in full (maxLength), and sent to the model as written.
    model = triager.output
    assert output_schema(model)["properties"]["category"]["enum"] == ["order", "billing", "product", "other"]
    model.model_validate({"category": "order", "summary": "s"})
    with pytest.raises(ValueError, match="summary"):
        model.model_validate({"category": "order", "summary": "x" * 401})
    with pytest.raises(ValueError):
        model.model_validate({"category": "refund", "summary": "s"})


# Each case: the file to edit, the text replaced, the replacement, and what the error must name.
CASES = {
    "unknown tool": (
        "agents/triager.yaml", "tools: [lookup_order]", "tools: [lookup_order, send_email]",
        ("agents/triager.yaml", "agent 'triager'", "tools[1]", "unknown tool 'send_email'"),
    ),
    "invalid JSON Schema": (
        "agents/triager.yaml", "summary: {type: string,", "summary: {type: strng,",
        ("agents/triager.yaml", "agent 'triager'", "output_schema", "not valid JSON Schema"),
    ),
    "output model not importable": (
        "agents/responder.yaml", "output_schema:\n", "output_model: agentflow_dagster.agents.schemas:Nope\n"
        "output_schema_unused:\n",
        ("agents/responder.yaml", "agent 'responder'", "output_schema_unused", "Extra inputs"),
    ),
    "template variable not provided": (
        "workflows/customer_request.yaml", "inputs: {message: $request.message, tier: $request.tier}",
        "inputs: {message: $request.message}",
        ("workflows/customer_request.yaml", "task 'triage'", "agent", "['tier']"),
    ),
    "missing prompt file": (
        "agents/triager.yaml", "prompt_file: triager.txt", "prompt_file: missing.txt",
        ("agents/triager.yaml", "agent 'triager'", "prompt_file", "prompts/missing.txt"),
    ),
    "unknown agent": (
        "workflows/customer_request.yaml", "agent: responder", "agent: replier",
        ("workflows/customer_request.yaml", "task 'respond'", "agent", "unknown agent 'replier'"),
    ),
    "cycle": (
        "workflows/customer_request.yaml", "    agent: triager\n",
        "    agent: triager\n    depends_on: [respond]\n",
        ("workflows/customer_request.yaml", "depends_on", "cycle"),
    ),
    "bad YAML": (
        "agentflow.yaml", "name: shop", "name: [shop",
        ("agentflow.yaml", "not valid YAML at line"),
    ),
    "bad project field": (
        "agentflow.yaml", "name: shop", "name: shop\nmodle: x",
        ("agentflow.yaml", "modle", "Extra inputs"),
    ),
    "invalid input schema": (
        "agents/responder.yaml", "tools: [notify_team]", "tools: [notify_team]\ninput_schema: {type: 12}",
        ("agents/responder.yaml", "agent 'responder'", "input_schema", "not valid JSON Schema"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_validation_error_names_file_and_field(project: Path, case: str) -> None:
    rel, old, new, expected = CASES[case]
    edit(project / rel, old, new)
    with pytest.raises((ProjectError, SpecError)) as caught:
        load_project(project)
    message = str(caught.value)
    for part in expected:
        assert part in message, (case, message)
    done = CliRunner().invoke(main, ["validate", str(project)])
    assert done.exit_code == 1 and rel in done.output


def test_a_tool_name_clash_names_both_files(project: Path) -> None:
    shutil.copy(project / "tools" / "shop.py", project / "tools" / "shop_copy.py")
    with pytest.raises(ProjectError) as caught:
        load_project(project)
    assert "lookup_order" in str(caught.value)
    assert "tools.shop.lookup_order" in str(caught.value) and "tools.shop_copy" in str(caught.value)


def test_a_broken_tool_module_names_its_file(project: Path) -> None:
    (project / "tools" / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ProjectError, match=r"tools/broken.py: importing it failed: ModuleNotFoundError"):
        load_project(project)


def test_models_come_from_the_standard_settings() -> None:
    offline = LLMResource()
    assert offline.offline and offline.model_for("fast") == OFFLINE_MODEL
    key_only = LLMResource(api_key="sk-test")
    assert not key_only.offline and key_only.endpoint == OPENAI_URL
    local = LLMResource(base_url="http://127.0.0.1:9/v1", models={"fast": "small"}, default_model="big")
    assert local.model_for("fast") == "small" and local.model_for("unmapped") == "big"
    pinned = LLMResource(base_url="http://127.0.0.1:9/v1", models={"fast": "small"}, model_override="llama")
    assert pinned.model_for("fast") == "llama"
    role = load_project(EXAMPLE_PROJECT).agents["classifier"]
    assert pinned.model_for_role(role) == "llama"


def test_the_offline_provider_invents_no_verdicts() -> None:
    review = load_project(EXAMPLE_PROJECT).agents["reviewer"].output
    answer = compose(output_schema(review), {"inputs": {"report": "A report. It has claims in it."}})
    assert "approved" not in answer and "score" not in answer
    assert review.model_validate(answer).approved is None
    required_verdict = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
    with pytest.raises(OfflineCannotJudge, match="'ok'"):
        OfflineExtractiveProvider().chat(
            ChatRequest([{"role": "user", "content": "x"}], "m", required_verdict)
        )
    nullable = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": ["boolean", "null"]}}}
    content = json.loads(OfflineExtractiveProvider().chat(ChatRequest([], "m", nullable)).content)
    assert content == {"ok": None, "offline": True}


def system_of(role: AgentRole) -> str:
    values = {"message": "m", "triage": "t", "inputs": "", "retrieved": "", "schema": ""}
    return str(role.prompt.format_messages(**values)[0].content)


def test_a_changed_project_is_reloaded_in_a_forked_worker(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentflow_dagster import project as project_pkg

    monkeypatch.setenv("AGENTFLOW_PROJECT_DIR", str(project))
    project_pkg.clear_cache()
    try:
        before = project_pkg.current_project().agents["responder"]
        assert project_pkg.refresh_if_changed() is False
        edit(
            project / "agents" / "responder.yaml",
            "You write short, polite replies",
            "You write haiku replies",
        )
        assert project_pkg.refresh_if_changed() is True
        after = project_pkg.current_project().agents["responder"]
        assert "haiku" in system_of(after) and "haiku" not in system_of(before)
    finally:
        project_pkg.clear_cache()
    assert project_loader.fingerprint(project)[0] == load_project(project).fingerprint


def test_agent_retrieval_settings_fill_the_task(project: Path) -> None:
    (project / "agents" / "finder.yaml").write_text(
        "name: finder\nsystem: Find passages.\ntools: [retrieval]\nretrieval: {collection: shop_kb, k: 7}\n"
        "output_model: agentflow_dagster.agents.schemas:Evidence\n"
    )
    (project / "workflows" / "find.yaml").write_text(
        'name: find\nversion: "1"\ninputs: {q: {type: string}}\ntasks:\n'
        "  - {task_id: a, agent: finder, inputs: {q: $request.q}, retrieval: {query: $request.q}}\n"
        "  - {task_id: b, agent: finder, inputs: {q: $request.q}, retrieval: {query: $request.q, k: 2}}\n"
    )
    spec = load_project(project).workflows["find"]
    assert spec.task("a").retrieval is not None and spec.task("b").retrieval is not None
    assert (spec.task("a").retrieval.collection, spec.task("a").retrieval.k) == ("shop_kb", 7)
    assert (spec.task("b").retrieval.collection, spec.task("b").retrieval.k) == ("shop_kb", 2)
    edit(project / "agents" / "finder.yaml", "retrieval: {collection: shop_kb, k: 7}", "retrieval: {k: 7}")
    with pytest.raises(SpecError, match=r"task 'a', field 'retrieval.collection': no collection"):
        load_project(project)
