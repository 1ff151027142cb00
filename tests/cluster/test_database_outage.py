"""``briefd serve`` on PostgreSQL while the database goes away and comes back.

What the issue promises when PostgreSQL is unreachable: the daemon stops
granting tokens (it cannot count the cluster's calls), ``/healthz`` says so,
a call already in flight finishes and its document is kept in memory until it
can be written, nothing acknowledged is lost, and work resumes by itself when
the database is back. The outage is real: the test database refuses new
connections and every session on it is terminated, as a server restart would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from daemon_helpers import HTTP, STAGES, Daemon, make_job, wait_for
from pg import PgServer
from prometheus_client.parser import text_string_to_metric_families

from briefd.messages import JobStatus
from briefd.sim.server import Fault, SimProfile, SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


def _outage(server: PgServer, dbname: str, down: bool) -> None:
    """Refuse (or allow again) connections to ``dbname``; when refusing, end every session."""
    with psycopg.connect(server.url(), autocommit=True) as admin:
        flag = "false" if down else "true"
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {flag}'.encode())
        if down:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )


def test_a_database_outage_holds_grants_keeps_the_document_and_resumes(
    sim: SimServer, pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    dbname = urlsplit(pg_url).path.lstrip("/")
    sim.inject(Fault(job_id="o-1", stage="BRIEFING_MD", delay_s=2.0))
    d = Daemon(tmp_path, sim.base_url, database_url=pg_url, lease_s=60, poll_s=0.5)
    try:
        d.start()
        with d.client() as client:
            client.submit(make_job("o-1"))

            def briefing_live() -> bool:
                return any(
                    r.job_id == "o-1" and r.stage == "BRIEFING_MD" and r.end is None
                    for r in sim.stats().requests
                )

            assert wait_for(briefing_live, 15), "the slow call never started"
            metrics = HTTP.get(f"{d.url}/metrics", headers=d.headers(), timeout=10)
            samples = {
                s.name: s.value
                for f in text_string_to_metric_families(metrics.text)
                for s in f.samples
            }
            assert samples["briefd_cluster_database_up"] == 1
            assert samples["briefd_claims_held"] == 1 and samples["briefd_cluster_daemons"] == 1
            assert samples["briefd_cluster_tokens_in_use"] >= 1
            _outage(pg_server, dbname, down=True)
            try:

                def unhealthy() -> str:
                    r = HTTP.get(f"{d.url}/healthz", timeout=15)
                    return r.text if r.status_code == 503 else ""

                body = wait_for(unhealthy, 20, 0.2)
                assert "database" in body, body
                assert wait_for(lambda: sim.stats().completed >= 2, 15), "in-flight call cut"
                seen = sim.stats().total_requests
                # PROCUREMENT_JSON is ready now but must not get a token: none is granted
                # without the database. Watch a window of time for a call that must not come.
                threading.Event().wait(1.5)
                assert sim.stats().total_requests == seen, "a call was granted during the outage"
            finally:
                _outage(pg_server, dbname, down=False)
            result = client.result("o-1", timeout=60)
            assert result.status is JobStatus.SUCCEEDED
            assert wait_for(lambda: HTTP.get(f"{d.url}/healthz", timeout=15).status_code == 200, 30)
    finally:
        d.stop()
    assert sim.stats().by_job_stage["o-1"] == dict.fromkeys(STAGES, 1), "a document bought twice"
