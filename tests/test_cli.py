"""``briefd run`` as a user runs it: a real subprocess against the simulator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from briefd.sim.server import Fault, SimServer


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _run_job(
    job: dict[str, Any], sim: SimServer, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`briefd run` on ``job`` against the sim; the process and its output directory."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    out = tmp_path / "out"
    cmd = briefd_cmd("run", str(path), "--out", str(out))
    return _run(cmd, child_env(BRIEFD_BASE_URL=sim.base_url), tmp_path), out


def test_run_writes_four_documents_and_the_result(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """Exit 0; briefing.md, plays.md, procurement.json, annex.json and result.json written."""
    proc, out = _run_job(make_job(), sim, tmp_path, briefd_cmd, child_env)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["annex.json", "briefing.md", "plays.md", "procurement.json", "result.json"]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert json.loads((out / "annex.json").read_text()) == result["documents"]["ANNEX_JSON"]
    assert (out / "briefing.md").read_text() == result["documents"]["BRIEFING_MD"]
    assert "succeeded" in proc.stdout and str(out / "briefing.md") in proc.stdout


def test_partial_run_exits_3_and_skips_the_failed_document(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """A failed PLAYS_MD: exit 3, no plays.md, the error on stderr with its hint."""
    sim.inject(Fault(stage="PLAYS_MD", status=400, times=None))
    proc, out = _run_job(make_job(), sim, tmp_path, briefd_cmd, child_env)
    assert proc.returncode == 3, proc.stderr
    assert not (out / "plays.md").exists()
    assert "error PLAYS_MD HTTP_ERROR" in proc.stderr


def test_bad_input_exits_2_with_one_line(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """Bad job, bad config, bad variable: exit 2 and one line naming it, no traceback."""
    env = child_env(BRIEFD_BASE_URL=sim.base_url)
    job = make_job()
    del job["prompts"]["ANNEX_JSON"]
    bad_job = tmp_path / "job.json"
    bad_job.write_text(json.dumps(job))
    cases = [
        (briefd_cmd("run", str(bad_job), "--out", "o"), env, "prompts.ANNEX_JSON"),
        (
            briefd_cmd("run", str(bad_job), "--out", "o", "--config", "missing.toml"),
            env,
            "missing.toml",
        ),
        (
            briefd_cmd("run", str(bad_job), "--out", "o"),
            {**env, "BRIEFD_TIMEOUT_MS": "x"},
            "BRIEFD_TIMEOUT_MS",
        ),
        (briefd_cmd("run"), env, "required"),
    ]
    for cmd, cmd_env, needle in cases:
        proc = _run(cmd, cmd_env, tmp_path)
        assert proc.returncode == 2, (cmd, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert sim.stats().total_requests == 0


def test_sim_command_serves_until_terminated(
    tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """``briefd sim --port 0`` prints its URL, answers, and exits 0 on SIGTERM."""
    import requests

    proc = subprocess.Popen(
        briefd_cmd("sim", "--port", "0", "--scale", "0"),
        env=child_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        models = requests.get(url + "/models", timeout=5).json()
        assert models["data"][0]["id"] == "briefd-sim"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
