"""``briefd serve`` on PostgreSQL while the database goes away and comes back.

What the issue promises when PostgreSQL is unreachable: the daemon stops
granting tokens (it cannot count the cluster's calls), ``/healthz`` says so,
a call already in flight finishes and its document is kept in memory until it
can be written, nothing acknowledged is lost, and work resumes by itself when
the database is back. The outage is real: the test database refuses new
connections and every session on it is terminated, as a server restart would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
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
                # Reads, /metrics and submissions: a clear 503, never a 500; nothing stored.
                status = HTTP.get(f"{d.url}/v1/jobs/o-1", headers=d.headers(), timeout=15)
                assert status.status_code == 503, status.text
                assert status.json()["error"]["code"] == "unavailable"
                assert HTTP.get(
                    f"{d.url}/metrics", headers=d.headers(), timeout=15
                ).status_code in (
                    200,
                    503,
                )
                refused = HTTP.post(
                    f"{d.url}/v1/jobs", json=make_job("o-2"), headers=d.headers(), timeout=15
                )
                assert refused.status_code == 503, refused.text
                assert "database" in refused.json()["error"]["message"], refused.text
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
            gone = HTTP.get(f"{d.url}/v1/jobs/o-2", headers=d.headers(), timeout=15)
            assert gone.status_code == 404, "a refused submission was stored"
            assert wait_for(lambda: HTTP.get(f"{d.url}/healthz", timeout=15).status_code == 200, 30)
    finally:
        d.stop()
    assert sim.stats().by_job_stage["o-1"] == dict.fromkeys(STAGES, 1), "a document bought twice"


def _daemon_sessions(pg_url: str) -> list[int]:
    """The server processes of the daemon's sessions on the test's database."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    with psycopg.connect(pg_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE 'briefd%%' AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_submissions_while_the_database_hangs_are_refused_and_never_stored(
    sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    """Every session of the daemon is frozen (SIGSTOP on its server processes: the database
    takes the statements and never answers, as a hung server would). Submissions are answered
    503 "not stored" within the ask's bound, /healthz answers at once (503 once the daemon
    cannot prove its claims or renew its leases), and once the sessions resume, none of the
    refused jobs is stored (before: 500 after 10 s, and most of them stored and run later)."""
    d = Daemon(tmp_path, sim.base_url, database_url=pg_url, lease_s=4, poll_s=0.5)
    frozen: list[int] = []
    try:
        d.start()
        with d.client() as client:
            client.submit(make_job("h-0"))
            assert client.result("h-0", timeout=30).status is JobStatus.SUCCEEDED
            frozen = _daemon_sessions(pg_url)
            assert frozen, "no briefd session found"
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            answers: dict[str, requests.Response] = {}

            def submit(job_id: str) -> None:
                answers[job_id] = HTTP.post(
                    f"{d.url}/v1/jobs", json=make_job(job_id), headers=d.headers(), timeout=30
                )

            threads = [threading.Thread(target=submit, args=(f"h-{i}",)) for i in (1, 2, 3)]
            for t in threads:
                t.start()
            slowest = 0.0

            def unhealthy() -> bool:
                nonlocal slowest
                began = time.monotonic()
                r = HTTP.get(f"{d.url}/healthz", timeout=5)
                slowest = max(slowest, time.monotonic() - began)
                return r.status_code == 503

            assert wait_for(unhealthy, 15, 0.1), "healthz kept saying ok"
            for t in threads:
                t.join(30)
            assert slowest < 1.0, f"/healthz took {slowest:.2f}s"  # bench: < 100 ms
            for job_id, r in answers.items():
                assert r.status_code == 503, (job_id, r.status_code, r.text)
                assert r.json()["error"]["code"] == "unavailable", r.text
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            frozen = []
            assert wait_for(lambda: HTTP.get(f"{d.url}/healthz", timeout=5).status_code == 200, 30)
            client.submit(make_job("h-9"))  # the root is free again: later work goes on
            assert client.result("h-9", timeout=30).status is JobStatus.SUCCEEDED
    finally:
        for pid in frozen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        d.stop()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        stored = admin.execute(
            "SELECT job_id FROM briefd_jobs WHERE job_id IN ('h-1', 'h-2', 'h-3')"
        ).fetchall()
    assert stored == [], f"refused submissions were stored: {stored}"
    assert not any(r.job_id in ("h-1", "h-2", "h-3") for r in sim.stats().requests)
