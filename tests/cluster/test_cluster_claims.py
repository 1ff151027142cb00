"""A daemon that cannot prove its claim on a job starts no call for it.

``briefd serve`` on the throwaway PostgreSQL with the simulated provider; the claim
is taken away, or made unprovable, behind the daemon's back by a connection of the
test's own:

* another "daemon" takes the job over (a newer fence) while a call is on the wire:
  the call finishes, its write is refused by the fence, and the next stage is never
  called (before: the run went on stage after stage, each document refused after
  being paid);
* the daemon cannot renew (its job's row is locked past the bound): once the last
  confirmed renewal is older than the lease minus the margin, no call starts for the
  job; when the renewal goes through again, the job goes on and ends once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from daemon_helpers import HTTP, Daemon, make_job, wait_for

from briefd.sim.server import Fault, SimProfile, SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


def _live(sim: SimServer, job_id: str, stage: str) -> bool:
    return any(
        r.job_id == job_id and r.stage == stage and r.end is None for r in sim.stats().requests
    )


def _calls(sim: SimServer, job_id: str, stage: str) -> int:
    return sum(1 for r in sim.stats().requests if r.job_id == job_id and r.stage == stage)


def test_a_job_taken_over_behind_its_back_gets_no_further_call(
    sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    """A long lease (renewals 20 s apart) so that only the refused write can tell the daemon:
    the next stage must not be called all the same."""
    sim.inject(Fault(job_id="t-1", stage="BRIEFING_MD", delay_s=2.0))
    d = Daemon(tmp_path, sim.base_url, database_url=pg_url, lease_s=60, poll_s=0.5)
    try:
        d.start()
        with d.client() as client:
            client.submit(make_job("t-1"))
            assert wait_for(lambda: _live(sim, "t-1", "BRIEFING_MD"), 15), "no call started"
            with psycopg.connect(pg_url, autocommit=True) as admin:  # another daemon's claim
                admin.execute(
                    "UPDATE briefd_jobs SET claimed_by = 'thief:1:0', "
                    "fence = nextval('briefd_fence'), lease_until = now() + interval '1 hour' "
                    "WHERE job_id = 't-1'"
                )
            assert wait_for(lambda: not _live(sim, "t-1", "BRIEFING_MD"), 15), "call never ended"
            # The write of BRIEFING_MD is refused; PROCUREMENT_JSON (which needed it) is ready
            # in the run here. Watch a window for a call that must not come.
            assert wait_for(lambda: "claim lost" in d.log(), 10), d.log()
            threading.Event().wait(2.0)
            assert _calls(sim, "t-1", "PROCUREMENT_JSON") == 0, "called for a job taken over"
            assert _calls(sim, "t-1", "ANNEX_JSON") == 0
            with psycopg.connect(pg_url, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT state FROM briefd_stages WHERE job_id = 't-1' AND stage = 'BRIEFING_MD'"
                ).fetchone()
            assert row is not None and row[0] != "complete", "the fence let a zombie write"
    finally:
        d.stop()


def test_no_call_while_the_claim_cannot_be_proven_and_on_again_after(
    sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    """Lease 3 s: the job's row is locked by the test from while BRIEFING_MD is on the wire
    until 3 s after the claim stopped being provable; PROCUREMENT_JSON, ready meanwhile,
    is called only after the lock is gone, and the job ends once."""
    lease_s = 3.0
    sim.inject(Fault(job_id="u-1", stage="BRIEFING_MD", delay_s=lease_s + 1.0))
    d = Daemon(tmp_path, sim.base_url, database_url=pg_url, lease_s=lease_s, poll_s=0.5)
    try:
        d.start()
        with d.client() as client:
            client.submit(make_job("u-1"))
            assert wait_for(lambda: _live(sim, "u-1", "BRIEFING_MD"), 15), "no call started"
            with psycopg.connect(pg_url) as admin:  # its renewals wait on this lock, time out
                admin.execute("SELECT 1 FROM briefd_jobs WHERE job_id = 'u-1' FOR UPDATE")
                assert wait_for(lambda: not _live(sim, "u-1", "BRIEFING_MD"), 15)

                def unproven() -> str:
                    r = HTTP.get(f"{d.url}/healthz", timeout=5)
                    return r.text if r.status_code == 503 and "claim" in r.text else ""

                assert wait_for(unproven, 10, 0.1), "healthz never said the claim is unproven"
                threading.Event().wait(1.0)  # PROCUREMENT_JSON is ready: watch for its call
                assert _calls(sim, "u-1", "PROCUREMENT_JSON") == 0, "a call on an unproven claim"
                admin.rollback()
            result = client.result("u-1", timeout=60)
            assert result.status.value == "succeeded"
            assert wait_for(lambda: HTTP.get(f"{d.url}/healthz", timeout=5).status_code == 200, 10)
    finally:
        d.stop()
    counts = sim.stats().by_job_stage["u-1"]
    assert counts["PROCUREMENT_JSON"] == 1 and counts["ANNEX_JSON"] == 1, counts
