"""Bad input is refused with a message that names the field or file, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from briefd.config import ConfigError, Settings, load_pipeline
from briefd.config.settings import unknown_environment
from briefd.jobs import load_job_file, schema_sources, stage_contract, validate_job
from briefd.messages import SchemaSource


def _pipeline_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(body)
    return path


STAGE = """
[[stages]]
name = "{name}"
output = "{name}.md"
kind = "markdown"
depends_on = {deps}
"""


def _stages(*specs: tuple[str, list[str]]) -> str:
    return "".join(STAGE.format(name=n, deps=str(d).replace("'", '"')) for n, d in specs)


def test_default_pipeline_is_the_seed() -> None:
    """The built-in pipeline: briefing+plays, then procurement, then annex, weights 30/30/20/20."""
    p = load_pipeline()
    assert p.names == ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
    assert p.roots == ("BRIEFING_MD", "PLAYS_MD")
    assert [s.weight for s in p.stages] == [30, 30, 20, 20]
    assert p.by_name["PROCUREMENT_JSON"].fallback == "procurement_metrics"
    assert all(s.schema_ is None for s in p.stages)  # the job owns its output contract
    assert p.remaining_path == {
        "BRIEFING_MD": 3,
        "PLAYS_MD": 3,
        "PROCUREMENT_JSON": 2,
        "ANNEX_JSON": 1,
    }


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (_stages(("A", ["B"]), ("B", ["A"])), "dependency cycle: A -> B -> A"),
        (_stages(("A", ["NOPE"])), "stage A depends on unknown stage NOPE"),
        (_stages(("A", []), ("A", [])), "duplicate stage A"),
        (_stages(("A", ["A"])), "stage A depends on itself"),
    ],
)
def test_bad_pipeline_is_refused_naming_the_problem(
    tmp_path: Path, stages: str, expected: str
) -> None:
    """Cycles, unknown dependencies and duplicates are refused at load, naming the stage."""
    path = _pipeline_file(tmp_path, stages)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_pipeline_file_syntax_and_fields(tmp_path: Path) -> None:
    """TOML syntax errors, unknown keys and missing files name the file and the field."""
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_pipeline(_pipeline_file(tmp_path, "[[stages]\nname="))
    bad_key = _stages(("A", [])) + 'colour = "red"\n'
    with pytest.raises(ConfigError, match=r"stages\.0\.colour"):
        load_pipeline(_pipeline_file(tmp_path, bad_key))
    with pytest.raises(ConfigError, match=r"not-there\.toml"):
        load_pipeline(tmp_path / "not-there.toml")


def test_bad_job_input_names_the_field(make_job: Any) -> None:
    """A missing prompt, a wrong type, an unsafe job_id or an unknown stage names the field."""
    pipeline = load_pipeline()
    job = make_job()
    del job["prompts"]["PLAYS_MD"]
    with pytest.raises(ConfigError, match=r"prompts\.PLAYS_MD: missing"):
        validate_job(job, pipeline)
    with pytest.raises(ConfigError, match=r"prompts\.BRIEFING_MD"):
        validate_job(make_job(prompts={**make_job()["prompts"], "BRIEFING_MD": 42}), pipeline)
    with pytest.raises(ConfigError, match="job_id"):
        validate_job(make_job("../../etc/passwd"), pipeline)
    with pytest.raises(ConfigError, match=r"prompts\.EXTRA_MD: no such stage"):
        validate_job(make_job(prompts={**make_job()["prompts"], "EXTRA_MD": "x"}), pipeline)
    with pytest.raises(ConfigError, match="must be a JSON object"):
        validate_job(["not", "a", "job"], pipeline)


def test_job_file_errors_name_the_file(tmp_path: Path) -> None:
    """Unreadable or malformed job files are named in the error."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"job file .*bad\.json: invalid JSON"):
        load_job_file(bad, load_pipeline())
    with pytest.raises(ConfigError, match=r"missing\.json"):
        load_job_file(tmp_path / "missing.json", load_pipeline())


def test_settings_from_environment_and_file(tmp_path: Path, monkeypatch: Any) -> None:
    """BRIEFD_* variables are the public names; a TOML file sits under the environment."""
    conf = tmp_path / "briefd.toml"
    conf.write_text('max_concurrent = 5\nmodel = "from-file"\ntimeout_ms = 1234\n')
    monkeypatch.setenv("BRIEFD_MAX_CONCURRENT", "3")
    monkeypatch.setenv("BRIEFD_PARALLEL", "false")
    monkeypatch.setenv("BRIEFD_API_KEY", "sk-test-123")
    s = Settings.load(conf)
    assert s.max_concurrent == 3  # the environment wins
    assert s.model == "from-file" and s.timeout_ms == 1234
    assert s.parallel is False
    assert "sk-test-123" not in repr(s)
    assert s.api_key_value() == "sk-test-123"


def test_bad_settings_name_the_variable(tmp_path: Path, monkeypatch: Any) -> None:
    """A bad value or an unknown key in the file is one line naming it."""
    monkeypatch.setenv("BRIEFD_MAX_CONCURRENT", "zero")
    with pytest.raises(ConfigError, match=r"^settings: BRIEFD_MAX_CONCURRENT: "):
        Settings.load()
    monkeypatch.delenv("BRIEFD_MAX_CONCURRENT")
    conf = tmp_path / "briefd.toml"
    conf.write_text("max_concurency = 2\n")
    with pytest.raises(ConfigError, match="max_concurency") as err:
        Settings.load(conf)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "nope.toml")


def test_log_level_in_any_case(monkeypatch: Any) -> None:
    """``debug`` works as ``DEBUG``; a level that does not exist names BRIEFD_LOG_LEVEL."""
    monkeypatch.setenv("BRIEFD_LOG_LEVEL", "debug")
    assert Settings.load().log_level == "DEBUG"
    monkeypatch.setenv("BRIEFD_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as err:
        Settings.load()
    assert str(err.value).startswith("settings: BRIEFD_LOG_LEVEL: 'loud' is not a log level")
    assert "log_level" not in str(err.value).split(":")[1]


def test_file_errors_name_the_variable_and_the_key(tmp_path: Path) -> None:
    """A bad value from the config file names both the variable and the file's key."""
    conf = tmp_path / "briefd.toml"
    conf.write_text("max_concurrent = 0\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(conf)
    assert f"BRIEFD_MAX_CONCURRENT (or max_concurrent in {conf})" in str(err.value)


def test_unknown_variables_are_named_with_a_suggestion() -> None:
    """A misspelt BRIEFD_* variable is not silently ignored: it is named, with the closest one."""
    env = {
        "BRIEFD_MAX_CONCURENT": "4",
        "BRIEFD_BASE_URL": "http://127.0.0.1:1/v1",
        "BRIEFD_CONFIG": "x.toml",
        "BRIEFD_COLOUR": "red",
        "HOME": "/root",
    }
    assert unknown_environment(env) == [
        "BRIEFD_COLOUR",
        "BRIEFD_MAX_CONCURENT (did you mean BRIEFD_MAX_CONCURRENT?)",
    ]


def test_default_data_dir_is_per_user_state(tmp_path: Path, monkeypatch: Any) -> None:
    """The daemon's data lives in $XDG_STATE_HOME/briefd, not relative to the working folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    assert Settings().data_dir == tmp_path / "state" / "briefd"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().data_dir == tmp_path / "home" / ".local" / "state" / "briefd"


def test_job_schemas_are_checked_and_named(make_job: Any) -> None:
    """A job's schema must be for a JSON stage and be a valid JSON Schema; errors name it."""
    pipeline = load_pipeline()
    with pytest.raises(ConfigError, match=r"schemas\.BRIEFING_MD: not a JSON stage"):
        validate_job(make_job(schemas={"BRIEFING_MD": {"type": "object"}}), pipeline)
    with pytest.raises(ConfigError, match=r"schemas\.NOPE: not a JSON stage"):
        validate_job(make_job(schemas={"NOPE": {"type": "object"}}), pipeline)
    with pytest.raises(ConfigError, match=r"schemas\.ANNEX_JSON: invalid JSON schema"):
        validate_job(make_job(schemas={"ANNEX_JSON": {"type": "no-such-type"}}), pipeline)


def test_the_output_contract_belongs_to_the_job(tmp_path: Path, make_job: Any) -> None:
    """The job's schema wins, then the pipeline's; with neither a JSON stage takes any JSON."""
    mine = {"type": "object", "required": ["total"]}
    job = validate_job(make_job(schemas={"PROCUREMENT_JSON": mine}), load_pipeline())
    assert schema_sources(load_pipeline(), job) == {
        "PROCUREMENT_JSON": SchemaSource.JOB,
        "ANNEX_JSON": SchemaSource.NONE,
    }
    stage, source = stage_contract(load_pipeline().by_name["PROCUREMENT_JSON"], job)
    assert stage.schema_ == mine and source is SchemaSource.JOB
    (tmp_path / "annex.schema.json").write_text('{"type": "object"}')
    team = tmp_path / "pipeline.toml"
    team.write_text(
        _stages(("A_JSON", [])).replace('kind = "markdown"', 'kind = "json"')
        + 'schema_file = "annex.schema.json"\n'
    )
    team_job = validate_job({"job_id": "t", "prompts": {"A_JSON": "x"}}, load_pipeline(team))
    assert schema_sources(load_pipeline(team), team_job) == {"A_JSON": SchemaSource.PIPELINE}


def test_the_active_window_follows_the_token_cap() -> None:
    """Unset, max_active_jobs is 1.5 x max_concurrent (at least 8): more active jobs than the
    tokens can serve only park threads. A value that is set is kept as it is."""
    assert Settings().active_jobs == 8
    assert Settings(max_concurrent=16).active_jobs == 24
    assert Settings(max_concurrent=7).active_jobs == 11, "rounded up"
    assert Settings(max_concurrent=16, max_active_jobs=5).active_jobs == 5
