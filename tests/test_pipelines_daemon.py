"""Named pipelines in ``briefd serve`` (a real child process against the simulator): jobs of
two pipelines at once, GET /v1/pipelines, SIGHUP reloading the folder while a job keeps its
version, and a resume after the file changed running the version (and the rendered prompts)
the job started with."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import HTTP, Daemon, journal_rows, make_job, wait_for

from briefd.sim.server import Fault, SimServer

EXAMPLES = Path(__file__).parents[1] / "examples"
MEMO_JOB = json.loads((EXAMPLES / "renewal-memo.json").read_text(encoding="utf-8"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A pipelines folder holding a copy of the example renewal memo."""
    found = tmp_path / "pipelines"
    found.mkdir()
    shutil.copy(EXAMPLES / "pipelines" / "renewal-memo.toml", found)
    return found


def _revise(folder: Path, marker: str) -> None:
    """A new version of the renewal memo: its memo's template gains a line."""
    path = folder / "renewal-memo.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("Write the renewal memo.", f"Write the renewal memo. {marker}"))


def _pipelines(d: Daemon) -> dict[str, dict[str, Any]]:
    found = HTTP.get(f"{d.url}/v1/pipelines", headers=d.headers(), timeout=5).json()
    return {p["name"]: p for p in found["pipelines"]}


def _submit(d: Daemon, job: dict[str, Any]) -> None:
    r = HTTP.post(f"{d.url}/v1/jobs", json=job, headers=d.headers(), timeout=10)
    assert r.status_code == 202, r.text


def _result(d: Daemon, job_id: str) -> dict[str, Any]:
    r = HTTP.get(f"{d.url}/v1/jobs/{job_id}/result?wait=30", headers=d.headers(), timeout=40)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def _memo_job(job_id: str) -> dict[str, Any]:
    return {**MEMO_JOB, "job_id": job_id}


def test_jobs_of_two_pipelines_run_at_once(sim: SimServer, tmp_path: Path, folder: Path) -> None:
    sim.set_scale(0.05)
    d = Daemon(tmp_path, sim.base_url, pipelines=folder).start()
    try:
        listed = _pipelines(d)
        assert sorted(listed) == ["briefing-pack", "renewal-memo"]
        assert listed["briefing-pack"]["default"] is True
        memo = listed["renewal-memo"]
        assert [s["name"] for s in memo["stages"]][-1] == "MEMO_MD"
        assert memo["stages"][2]["depends_on"] == ["ACCOUNT_MD", "FACTS_JSON"]
        refused = HTTP.post(
            f"{d.url}/v1/jobs",
            json={**make_job("x"), "pipeline": "nope"},
            headers=d.headers(),
            timeout=5,
        )
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["field"] == "pipeline"
        assert "known: briefing-pack, renewal-memo" in error["message"]
        bad = tmp_path / "bad-job.json"
        bad.write_text(json.dumps({**make_job("y"), "pipeline": "nope"}), encoding="utf-8")
        cli = subprocess.run(
            [sys.executable, "-m", "briefd", "submit", str(bad)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2, cli.stderr
        assert "pipeline: no pipeline 'nope'" in cli.stderr

        _submit(d, _memo_job("memo-1"))
        _submit(d, make_job("pack-1"))
        memo_result, pack_result = _result(d, "memo-1"), _result(d, "pack-1")
    finally:
        d.stop()
    assert memo_result["status"] == "succeeded", memo_result["errors"]
    assert pack_result["status"] == "succeeded", pack_result["errors"]
    assert memo_result["pipeline"] == f"renewal-memo@{memo['version']}"
    assert pack_result["pipeline"] == f"briefing-pack@{listed['briefing-pack']['version']}"
    # The later stages read the earlier documents (the simulator echoes the prompt's lines).
    assert "- List the risks to the renewal of memo-1" in memo_result["documents"]["RISKS_MD"]
    # At once: each job had a call in flight while the other one did.
    spans = {}
    for job_id in ("memo-1", "pack-1"):
        calls = [r for r in sim.stats().requests if r.job_id == job_id]
        spans[job_id] = (min(r.start for r in calls), max(r.end or 0 for r in calls))
    assert spans["memo-1"][0] < spans["pack-1"][1] and spans["pack-1"][0] < spans["memo-1"][1]
    files = sorted(p.name for p in (d.data_dir / "jobs" / "memo-1").iterdir())
    names = ["account.md", "facts.json", "memo.md", "result.json", "risks.md", "timeline.json"]
    assert files == names
    # briefd report (and the console) count the jobs per pipeline.
    report = subprocess.run(
        [sys.executable, "-m", "briefd", "report", str(d.log_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    by_pipeline = json.loads(report.stdout)["pipelines"]
    assert by_pipeline["renewal-memo"]["by_status"] == {"succeeded": 1}
    assert by_pipeline["renewal-memo"]["versions"] == [memo["version"]]
    assert by_pipeline["briefing-pack"]["jobs"] == 1
    text = subprocess.run(
        [sys.executable, "-m", "briefd", "report", str(d.log_path), "--width", "200"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "pipelines briefing-pack 1 job (1 succeeded)" in text
    assert "renewal-memo 1 job (1 succeeded)" in text


def test_sighup_reloads_the_folder_and_a_running_job_keeps_its_version(
    sim: SimServer, tmp_path: Path, folder: Path
) -> None:
    sim.inject(Fault(stage="ACCOUNT_MD", job_id="old-1", delay_s=1.5))
    d = Daemon(tmp_path, sim.base_url, pipelines=folder).start()
    try:
        before = _pipelines(d)["renewal-memo"]["version"]
        _submit(d, _memo_job("old-1"))
        assert sim.wait_for_in_flight(1, 10)  # ACCOUNT_MD of old-1 is on the wire
        _revise(folder, "REVISED")
        d.signal(signal.SIGHUP)
        assert wait_for(lambda: _pipelines(d)["renewal-memo"]["version"] != before, 15)
        after = _pipelines(d)["renewal-memo"]["version"]
        reloads = d.events("DaemonReloading")
        assert reloads[-1]["changed"] == {"pipeline renewal-memo": f"{before} -> {after}"}
        _submit(d, _memo_job("new-1"))
        old, new = _result(d, "old-1"), _result(d, "new-1")

        # A broken file on reload: its mistake logged, the pipelines kept whole.
        (folder / "renewal-memo.toml").write_text("[[stages]\n", encoding="utf-8")
        d.signal(signal.SIGHUP)
        assert wait_for(lambda: "pipelines not reloaded" in d.log(), 15), d.log()
        assert _pipelines(d)["renewal-memo"]["version"] == after
    finally:
        d.stop()
    assert old["status"] == new["status"] == "succeeded", (old["errors"], new["errors"])
    assert old["pipeline"] == f"renewal-memo@{before}"
    assert new["pipeline"] == f"renewal-memo@{after}"
    assert "REVISED" not in old["documents"]["MEMO_MD"]
    assert "- Write the renewal memo. REVISED" in new["documents"]["MEMO_MD"]


def test_a_resume_after_a_pipeline_change_runs_the_version_and_prompts_it_started_with(
    sim: SimServer, tmp_path: Path, folder: Path
) -> None:
    """kill -9 while MEMO_MD's call hangs; the file changes; the restarted daemon resumes the
    job on its old version and sends MEMO_MD the prompt the journal holds, not a new one."""
    sim.inject(Fault(stage="MEMO_MD", hang=True, times=None))
    d = Daemon(tmp_path, sim.base_url, pipelines=folder).start()
    try:
        version = _pipelines(d)["renewal-memo"]["version"]
        _submit(d, _memo_job("resume-1"))
        kept = "SELECT stage, prompt FROM stage_prompts WHERE job_id = 'resume-1'"
        assert wait_for(lambda: len(journal_rows(d.data_dir, kept)) == 3, 20), d.log()
        assert sim.wait_for_in_flight(1, 10)  # MEMO_MD hangs on the wire
        d.kill()
        rendered = dict(journal_rows(d.data_dir, kept))
        assert "Risks:" in rendered["MEMO_MD"] and "{{" not in rendered["MEMO_MD"]
        # What the journal holds is what is sent: mark it, and change the file meanwhile.
        db_path = d.data_dir / "briefd.sqlite3"
        import sqlite3

        db = sqlite3.connect(db_path)
        db.execute(
            "UPDATE stage_prompts SET prompt = 'AS JOURNALED\n' || prompt "
            "WHERE job_id = 'resume-1' AND stage = 'MEMO_MD'"
        )
        db.commit()
        db.close()
        _revise(folder, "REVISED")
        sim.reset()  # no more hanging
        d.start()
        assert _pipelines(d)["renewal-memo"]["version"] != version
        result = _result(d, "resume-1")
    finally:
        d.stop()
    assert result["status"] == "succeeded", result["errors"]
    assert result["pipeline"] == f"renewal-memo@{version}"
    memo = result["documents"]["MEMO_MD"]
    assert "- AS JOURNALED" in memo and "REVISED" not in memo
    # Only MEMO_MD was called again: the documents already paid for were not bought twice.
    assert sim.stats().by_stage == {"MEMO_MD": 1}
