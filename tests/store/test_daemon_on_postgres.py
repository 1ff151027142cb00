"""``briefd serve`` with BRIEFD_DATABASE_URL: the journal in PostgreSQL, a restart resumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from daemon_helpers import STAGES, Daemon, make_job, wait_for

from briefd.messages import JobStatus, StageState
from briefd.sim.server import Fault, SimProfile, SimServer


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.02)) as server:
        yield server


def test_a_daemon_on_postgres_keeps_jobs_across_kill_9(
    slow_sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    """Jobs are journaled in PostgreSQL, not SQLite: after kill -9 mid-stage the restarted
    daemon finishes them without calling a completed stage again. It resumes them at once,
    not after the dead daemon's lease (60 s here): its data dir says whose claims they were."""
    slow_sim.inject(Fault(job_id="pg-1", stage="PROCUREMENT_JSON", hang=True))
    d = Daemon(tmp_path, slow_sim.base_url, database_url=pg_url, lease_s=60)
    try:
        d.start()
        with d.client() as client:
            client.submit(make_job("pg-0"))
            client.submit(make_job("pg-1"))
            assert client.result("pg-0", timeout=30).status is JobStatus.SUCCEEDED
            assert wait_for(
                lambda: client.status("pg-1").stages["PROCUREMENT_JSON"] is StageState.RUNNING,
                15,
            )
        log = d.log_path.read_text(encoding="utf-8")
        started = [line for line in log.splitlines() if "briefd listening on" in line]
        assert started and "journal: PostgreSQL at " in started[-1], started
        assert f"/{urlsplit(pg_url).path.lstrip('/')}" in started[-1], started[-1]
        assert "; daemon " in started[-1], "the start-up line names the daemon's identity"
        d.kill()
        assert not (d.data_dir / "briefd.sqlite3").exists(), "the journal is in PostgreSQL"
        d.start()
        with d.client() as client:
            assert client.result("pg-1", timeout=30).status is JobStatus.SUCCEEDED
            assert client.result("pg-0", timeout=5).status is JobStatus.SUCCEEDED
    finally:
        d.kill()
    counts = slow_sim.stats().by_job_stage
    assert counts["pg-0"] == dict.fromkeys(STAGES, 1)
    assert counts["pg-1"]["BRIEFING_MD"] == counts["pg-1"]["PLAYS_MD"] == 1
    assert counts["pg-1"]["PROCUREMENT_JSON"] == 2  # the one in flight at the kill
