"""``briefd pipeline check``, and pipeline files refused whole (one line per mistake, exit 2)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from briefd.cli import main
from briefd.config import load_pipeline
from briefd.store.sqlite import Journal

EXAMPLE = Path(__file__).parents[1] / "examples" / "pipelines" / "renewal-memo.toml"
BAD = """
[[stages]]
name = "A_MD"
output = "a.md"
kind = "markdown"
prompt = "{{ B_MD }} and {{ job.nope }}"

[[stages]]
name = "B_MD"
output = "b.md"
kind = "markdown"
on_upstream_failure = "fallback"
"""


def test_check_finds_the_unused_edge_and_the_critical_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The example's TIMELINE_JSON waits for RISKS_MD (declared 6+5 s) but reads only
    FACTS_JSON (4 s): it could start 7 s earlier."""
    assert main(["pipeline", "check", str(EXAMPLE), "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "TIMELINE_JSON depends on RISKS_MD but does not read it: it could start 7.0 s" in out
    assert "critical path: ACCOUNT_MD -> RISKS_MD -> TIMELINE_JSON -> MEMO_MD: 20.0 s" in out
    assert "RISKS_MD depends on" not in out  # it reads both of its dependencies


def test_learned_latencies_come_from_the_journal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Past jobs of the pipeline in the data dir's journal beat the declared figures."""
    Journal(tmp_path / "briefd.sqlite3", load_pipeline()).close()
    db = sqlite3.connect(tmp_path / "briefd.sqlite3")
    for i, risks_ms in enumerate((9000, 11000, 10000)):
        result = {"pipeline": "renewal-memo@0123", "metrics": {"stages_ms": {"RISKS_MD": risks_ms}}}
        db.execute(
            "INSERT INTO jobs (job_id, spec, state, submitted_at, result) VALUES (?, '{}', "
            "'succeeded', 0, ?)",
            (f"j{i}", json.dumps(result)),
        )
    db.execute(  # another pipeline's job: not counted
        "INSERT INTO jobs (job_id, spec, state, submitted_at, result) VALUES ('x', '{}', "
        "'succeeded', 0, ?)",
        (json.dumps({"pipeline": "other@1", "metrics": {"stages_ms": {"RISKS_MD": 1}}}),),
    )
    db.commit()
    db.close()
    assert main(["pipeline", "check", str(EXAMPLE), "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RISKS_MD       markdown   10.0 s learned" in out
    assert "it could start 12.0 s earlier" in out  # 6 s + 10 s learned, less FACTS' 4 s


def _briefd(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}
    return subprocess.run(
        [sys.executable, "-m", "briefd", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


def test_check_of_a_bad_file_exits_2_with_one_line_per_mistake(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    done = _briefd(["pipeline", "check", str(path)], BRIEFD_DATA_DIR=str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines == [
        f"briefd: pipeline file {path}: stages.1: Value error, on_upstream_failure "
        '"fallback" needs a fallback field'
    ], done.stderr


def test_the_daemon_refuses_to_start_on_a_bad_pipeline_folder(tmp_path: Path) -> None:
    """Every file is checked at start; each mistake on its own line; exit 2, no traceback."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "memo.toml").write_text(BAD.replace('on_upstream_failure = "fallback"', ""))
    (folder / "broken.toml").write_text("[[stages]\n", encoding="utf-8")
    done = _briefd(
        ["serve"],
        BRIEFD_PIPELINES=str(folder),
        BRIEFD_DATA_DIR=str(tmp_path / "data"),
        BRIEFD_BASE_URL="http://127.0.0.1:9/v1",
        BRIEFD_LISTEN="127.0.0.1:0",
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("briefd: ")]
    assert len(lines) == 3, done.stderr
    assert lines[0].startswith(f"briefd: pipeline file {folder / 'broken.toml'}: invalid TOML")
    assert "stages.A_MD.prompt: {{ B_MD }} reads stage B_MD" in lines[1]
    assert "stages.A_MD.prompt: {{ job.nope }}: the job has no field nope" in lines[2]


def test_briefd_pipeline_is_the_default_and_the_built_in_stays(tmp_path: Path) -> None:
    """BRIEFD_PIPELINE's file is the default of jobs that name none, under its file name;
    briefing-pack is still there; one name for two different files is a mistake."""
    from briefd.config import ConfigError
    from briefd.pipelines.registry import PipelineRegistry

    own = tmp_path / "memo.toml"
    own.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    registry = PipelineRegistry.read(own, None)
    assert registry.default == "memo" and registry.names == ["briefing-pack", "memo"]
    assert registry.for_job({"job_id": "j"}).name == "memo"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "memo.toml").write_text(BAD, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"its name memo is also .*folder/memo.toml"):
        PipelineRegistry.read(own, folder)
    (folder / "briefing-pack.toml").write_text(EXAMPLE.read_text(encoding="utf-8"))
    with pytest.raises(ConfigError, match="briefing-pack is the built-in's name"):
        PipelineRegistry.read(None, folder)
