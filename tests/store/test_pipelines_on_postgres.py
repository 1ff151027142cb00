"""Named pipelines across daemons on one PostgreSQL: the job carries its pipeline with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from daemon_helpers import HTTP, Daemon, wait_for

from briefd.sim.server import Fault, SimServer

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_another_daemon_finishes_a_job_of_a_pipeline_it_does_not_serve(
    sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    """Daemon A accepts a renewal memo and dies mid-job (kill -9); daemon B, with no
    BRIEFD_PIPELINES at all, takes the job over when A's lease lapses and finishes it on the
    version A accepted: the journal holds the pipeline and the prompts already rendered."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(EXAMPLES / "pipelines" / "renewal-memo.toml", folder)
    job = json.loads((EXAMPLES / "renewal-memo.json").read_text(encoding="utf-8"))
    sim.inject(Fault(stage="MEMO_MD", hang=True))
    a = Daemon(tmp_path / "a", sim.base_url, database_url=pg_url, pipelines=folder, lease_s=2)
    b = Daemon(tmp_path / "b", sim.base_url, database_url=pg_url, lease_s=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        a.start()
        version = HTTP.get(f"{a.url}/v1/pipelines", headers=a.headers(), timeout=5).json()
        version = {p["name"]: p["version"] for p in version["pipelines"]}["renewal-memo"]
        r = HTTP.post(f"{a.url}/v1/jobs", json=job, headers=a.headers(), timeout=10)
        assert r.status_code == 202, r.text
        assert sim.wait_for_in_flight(1, 20) and wait_for(
            lambda: sim.stats().by_stage.get("MEMO_MD") == 1, 20
        )
        a.kill()
        b.start()
        listed = HTTP.get(f"{b.url}/v1/pipelines", headers=b.headers(), timeout=5).json()
        assert [p["name"] for p in listed["pipelines"]] == ["briefing-pack"]
        r = HTTP.get(
            f"{b.url}/v1/jobs/{job['job_id']}/result?wait=30", headers=b.headers(), timeout=40
        )
        assert r.status_code == 200, r.text
        result = r.json()
    finally:
        a.kill()
        b.stop()
    assert result["status"] == "succeeded", result["errors"]
    assert result["pipeline"] == f"renewal-memo@{version}"
    assert "- Write the renewal memo." in result["documents"]["MEMO_MD"]
    assert sim.stats().by_stage["MEMO_MD"] == 2  # the one cut by the kill, then B's
    assert sim.stats().by_stage["ACCOUNT_MD"] == 1  # never bought twice
