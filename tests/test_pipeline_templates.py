"""Templated prompts: what reads as a template, what renders, what is refused at load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from briefd.config import ConfigError, load_pipeline
from briefd.jobs import validate_job
from briefd.pipelines import templates
from briefd.pipelines.inputs import StageInputs
from briefd.pipelines.registry import PipelineRegistry, read_pipeline

PACK = load_pipeline()


def _job(**prompts: str) -> dict[str, Any]:
    base = {s: f"Write {s}." for s in PACK.names}
    return {"job_id": "t-1", "prompts": {**base, **prompts}, "procurement_metrics": {"n": 3}}


def _render(text: str, stage: str, **documents: Any) -> str:
    job = validate_job(_job(**{stage: text}), PACK)
    planned = StageInputs(job, PACK).plan(stage, documents, {})
    assert planned.error is None, planned.error
    assert planned.prompt is not None
    return planned.prompt


def test_markdown_json_field_paths_and_job_fields_render() -> None:
    """{{ X_MD }} is the text, {{ X_JSON }} the JSON text, a field path reads into it, and
    job fields are there too."""
    procurement = {"vendors": [{"name": "Initech"}], "items": ["not dict.items"]}
    out = _render(
        "Brief:\n{{ BRIEFING_MD }}\nAll: {{ PROCUREMENT_JSON }}\n"
        "First: {{ PROCUREMENT_JSON.vendors[0].name }}; {{ PROCUREMENT_JSON.items[0] }}\n"
        "Metrics: {{ job.procurement_metrics }} for {{ job.job_id }}",
        "ANNEX_JSON",
        BRIEFING_MD="# Acme\n\nA customer.\n",
        PROCUREMENT_JSON=procurement,
    )
    assert "Brief:\n# Acme\n\nA customer.\n" in out
    all_line = out.split("All: ", 1)[1].split("\nFirst:")[0]
    assert json.loads(all_line) == procurement  # JSON text, not a Python repr
    assert "First: Initech; not dict.items" in out
    assert 'Metrics: {\n  "n": 3\n} for t-1' in out


def test_prompts_without_placeholders_are_sent_as_written() -> None:
    """Single braces, and double braces naming no stage or job field, stay literal."""
    for text in ("Use {SUMMARY_MD} here.", "A Mustache sample: {{ customer }}", "{{ broken"):
        job = validate_job(_job(ANNEX_JSON=text), PACK)
        inputs = StageInputs(job, PACK)
        planned = inputs.plan("ANNEX_JSON", {}, {})
        assert planned.prompt is None and not planned.rendered  # the stage sends its own
        assert inputs.prompt("ANNEX_JSON") == text


def test_a_job_template_naming_a_stage_it_does_not_depend_on_is_refused() -> None:
    """At submission: the stage and the placeholder are named, one line per mistake."""
    bad = _job(PROCUREMENT_JSON="{{ ANNEX_JSON }} and {{ PLAYS_MD.title }}")
    with pytest.raises(ConfigError) as err:
        validate_job(bad, PACK)
    lines = str(err.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("job: prompts.PROCUREMENT_JSON: {{ ANNEX_JSON }} reads stage")
    assert "PROCUREMENT_JSON does not depend on" in lines[0]
    assert "{{ PLAYS_MD.title }}: PLAYS_MD is a Markdown document" in lines[1]


def test_a_pipeline_template_naming_a_stage_it_does_not_depend_on_is_refused_at_load(
    tmp_path: Path,
) -> None:
    """The pipeline file's own templates are checked when it is read."""
    path = tmp_path / "memo.toml"
    path.write_text(
        '[[stages]]\nname = "A_MD"\noutput = "a.md"\nkind = "markdown"\n'
        '[[stages]]\nname = "B_MD"\noutput = "b.md"\nkind = "markdown"\n'
        'prompt = "From {{ A_MD }}"\n',
        encoding="utf-8",
    )
    spec, mistakes = read_pipeline(path, "memo")
    assert spec is None
    assert mistakes == [
        f"pipeline file {path}: stages.B_MD.prompt: {{{{ A_MD }}}} reads stage A_MD, which "
        "B_MD does not depend on (depends_on: none); add it to depends_on or drop the "
        "placeholder"
    ]
    with pytest.raises(ConfigError) as err:
        PipelineRegistry.read(None, tmp_path)
    assert "{{ A_MD }} reads stage A_MD" in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "{{ BRIEFING_MD.__class__.__mro__ }}",
        "{{ job.__class__ }}",
        "{{ BRIEFING_MD }} {{ ''.__class__.__mro__[1].__subclasses__() }}",
    ],
)
def test_a_template_reaching_python_internals_is_refused_at_load(text: str) -> None:
    with pytest.raises(ConfigError, match="reaches for Python internals: refused"):
        validate_job(_job(PROCUREMENT_JSON=text), PACK)


def test_the_sandbox_refuses_python_internals_at_render_too() -> None:
    """Past the load check (a template built by hand), Jinja2's sandbox still refuses."""
    t = templates.parse("{{ BRIEFING_MD | attr('__class__') }}", PACK.names)
    assert t is not None and not t.internals  # a filter: the load check cannot see it
    with pytest.raises(templates.TemplateError, match="refused by the sandbox"):
        templates.render(t, {"BRIEFING_MD": "x"})


def test_a_missing_field_ends_the_stage_upstream_failed_naming_it() -> None:
    """StrictUndefined: a field the upstream document lacks is an error, never ''."""
    job = validate_job(_job(ANNEX_JSON="{{ PROCUREMENT_JSON.vendors }}"), PACK)
    planned = StageInputs(job, PACK).plan("ANNEX_JSON", {"PROCUREMENT_JSON": {"a": 1}}, {})
    assert planned.error is not None and planned.prompt is None
    assert planned.error.code == "UPSTREAM_FAILED"
    assert "has no attribute 'vendors'" in planned.error.message


def test_a_resumed_run_sends_the_rendered_prompt_never_a_new_rendering() -> None:
    job = validate_job(_job(ANNEX_JSON="From {{ PROCUREMENT_JSON.v }}"), PACK)
    inputs = StageInputs(job, PACK, rendered={"ANNEX_JSON": "From before"})
    planned = inputs.plan("ANNEX_JSON", {"PROCUREMENT_JSON": {"v": "now"}}, {})
    assert planned.prompt == "From before" and not planned.rendered


def test_versions_are_content_hashes_and_snapshots_round_trip(tmp_path: Path) -> None:
    source = Path(__file__).parents[1] / "examples" / "pipelines" / "renewal-memo.toml"
    path = tmp_path / "renewal-memo.toml"
    path.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    first = PipelineRegistry.read(None, tmp_path)
    spec = first.get("renewal-memo")
    assert first.pinned(spec.snapshot, None) is spec
    path.write_text(source.read_text(encoding="utf-8").replace("weight = 15", "weight = 16"))
    second = PipelineRegistry.read(None, tmp_path)
    assert second.get("renewal-memo").version != spec.version
    assert first.changes(second) == {
        "pipeline renewal-memo": f"{spec.version} -> {second.get('renewal-memo').version}"
    }
    again = second.pinned(spec.snapshot, "renewal-memo")  # the old one, from the journal
    assert again.version == spec.version and again.ref == spec.ref


def test_a_job_naming_an_unknown_pipeline_is_refused_naming_pipeline() -> None:
    registry = PipelineRegistry.read(None, None)
    with pytest.raises(ConfigError) as err:
        registry.for_job({"pipeline": "nope"})
    assert str(err.value) == "job: pipeline: no pipeline 'nope' (known: briefing-pack)"


def test_the_readme_two_stage_example_runs(tmp_path: Path, sim: Any, make_settings: Any) -> None:
    """The README's templated example, as written there, loads and runs on the simulator."""
    import re

    import briefd

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(# two-stage\.toml.*?)```", readme, re.S)
    assert block is not None
    (tmp_path / "two-stage.toml").write_text(block.group(1), encoding="utf-8")
    job = {"job_id": "readme-1", "pipeline": "two-stage", "prompts": {"FACTS_JSON": "Facts."}}
    result = briefd.run(job, make_settings(pipelines=tmp_path))
    assert result.status == "succeeded", result.errors
    assert result.pipeline.startswith("two-stage@")
    assert "- Write a renewal memo for readme-1, renewing on " in result.documents["MEMO_MD"]


def test_a_broken_placeholder_of_a_stage_is_refused_not_sent_literally() -> None:
    """``{{ PLAYS_MD }`` plainly meant a placeholder: refused with Jinja's reason."""
    with pytest.raises(ConfigError) as err:
        validate_job(_job(PROCUREMENT_JSON="From {{ PLAYS_MD } here"), PACK)
    assert str(err.value) == (
        "job: prompts.PROCUREMENT_JSON: not a valid template (line 1: unexpected '}')"
    )


def test_a_template_rendering_past_the_size_cap_is_refused() -> None:
    t = templates.parse("{% for i in range(100000) %}{{ BRIEFING_MD }}{% endfor %}", PACK.names)
    assert t is not None
    with pytest.raises(templates.TemplateError, match="passed 2000000 characters"):
        templates.render(t, {"BRIEFING_MD": "x" * 100})


def test_the_log_keeps_a_rendered_prompt_as_its_digest_not_its_text() -> None:
    """A prompt is the client's content: the event log says its size and hash only."""
    from briefd.messages import StagePromptRendered
    from briefd.ops.eventlog import event_payload

    event = StagePromptRendered(job_id="j", stage="ANNEX_JSON", prompt="secret plan " * 10)
    payload = json.dumps(event_payload(event))
    assert "secret plan" not in payload
    assert "sha256" in payload
