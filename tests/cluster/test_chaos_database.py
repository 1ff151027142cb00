"""PostgreSQL itself restarted, or down for 12 s while clients keep submitting, under two
daemons running jobs.

A restart must cost nothing: every job ends once, nothing committed is bought again, no
call is started for a job another daemon took. During an outage every submission must get
a true answer, at once: acknowledged (stored, and then it runs) or refused (never stored,
never run); ``/healthz`` says 503 within a lease and answers within a second throughout.
Issue 18 saw, for a 12 s outage, submissions answered ``500 internal error (Timeout)`` after
10 s of which 4 of 6 were stored and ran afterwards, calls started by daemons whose claims
had been replaced, and ``/healthz`` taking up to 5 s.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import requests
from daemon_helpers import HTTP, make_job
from pg import PgServer

from cluster.chaos import (
    HealthProbe,
    Record,
    cluster,
    poll,
    rows,
    start_server,
    stop_server,
)

K = 2
LEASE_S = 2.0
POLL_S = 0.5
OUTAGE_S = 12.0
"""The issue's: longer than the daemon's own 10 s wait for an answer from its root actor."""
ANSWER_S = 12.0
"""A submission is answered within this during an outage: the daemon waits 10 s at most
for its root actor, then answers (the client's own timeout)."""
SETTINGS = {"max_concurrent": K, "lease_s": LEASE_S, "poll_s": POLL_S, "max_active_jobs": 2}


def _no_double_work(record: Record, jobs: list[str]) -> None:
    assert not record.not_ended_once(jobs), record.not_ended_once(jobs)
    assert not record.calls_after_replacement(), record.calls_after_replacement()
    assert not record.calls_after_commit(), record.calls_after_commit()


def test_a_database_restart_costs_nothing(pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    jobs = [f"s-{n:02d}" for n in range(8)]
    with cluster(pg_server, pg_url, tmp_path, ("a", "b"), **SETTINGS) as c:
        c.submit(jobs)
        poll(lambda: all(m.busy() for m in c.members), 30, "both daemons calling")
        options = stop_server(pg_server, "immediate")  # a crash: no session ends cleanly
        start_server(pg_server, options)
        assert c.all_ended(jobs, 60), c.states()
        for m in c.members:
            poll(lambda m=m: HTTP.get(f"{m.daemon.url}/healthz", timeout=2).ok, 10, "healthy")
        record = c.record()
    _no_double_work(record, jobs)


class _Submission:
    """One submission in a thread of its own: its answer (status, or None: none in time)."""

    def __init__(self, url: str, headers: dict[str, str], job_id: str) -> None:
        self.job_id = job_id
        self.status: int | None = None
        self.body = ""
        self.took = 0.0
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        began = time.monotonic()
        try:
            r = HTTP.post(
                f"{url}/v1/jobs", json=make_job(self.job_id), headers=headers, timeout=ANSWER_S
            )
            self.status, self.body = r.status_code, r.text[:200]
        except requests.RequestException as err:
            self.body = type(err).__name__
        self.took = time.monotonic() - began

    def join(self) -> None:
        self._thread.join(ANSWER_S + 5)

    def __repr__(self) -> str:
        return f"{self.job_id}: {self.status} in {self.took:.1f}s {self.body!r}"


def test_a_database_outage_acknowledges_only_what_it_stores(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    before = [f"o-{n:02d}" for n in range(4)]
    with cluster(pg_server, pg_url, tmp_path, ("a", "b"), **SETTINGS) as c:
        c.submit(before)
        poll(lambda: any(m.busy() for m in c.members), 30, "a call on the wire")
        probes = [HealthProbe(m.daemon.url) for m in c.members]
        for p in probes:
            p.__enter__()
        sent: list[_Submission] = []
        try:
            options = stop_server(pg_server, "immediate")
            down_at = time.time()
            try:
                n = 0
                while time.time() < down_at + OUTAGE_S - 1:
                    for m in c.members:
                        sent.append(_Submission(m.daemon.url, m.daemon.headers(), f"x-{n:02d}"))
                        n += 1
                    threading.Event().wait(1.5)
            finally:
                threading.Event().wait(max(0.0, down_at + OUTAGE_S - time.time()))
                start_server(pg_server, options)
            up_at = time.time()
            for s in sent:
                s.join()
            for m in c.members:
                poll(lambda m=m: m.daemon.client().healthy(), 30, f"{m.name} healthy again")
        finally:
            for p in probes:
                p.__exit__()
        acked = [s.job_id for s in sent if s.status in (200, 202)]
        refused = [s for s in sent if s.status is not None and s.status not in (200, 202)]
        unanswered = [s for s in sent if s.status is None]
        assert c.all_ended([*before, *acked], 60), c.states()
        record = c.record()
        stored = {j for (j,) in rows(pg_url, "SELECT job_id FROM briefd_jobs")}

    assert not unanswered, f"no answer within {ANSWER_S:g}s during the outage: {unanswered}"
    ran = [s for s in refused if s.job_id in stored or s.job_id in record.claims]
    assert not ran, f"refused, yet stored and run: {ran}"
    called = {x.job_id for x in record.calls} & {s.job_id for s in refused}
    assert not called, f"refused, yet called: {sorted(called)}"
    _no_double_work(record, [*before, *acked])
    for p in probes:
        _healthz_during(p.between(down_at + LEASE_S, up_at), p.seen)


def _healthz_during(
    outage: list[tuple[float, int | None, float]], seen: list[tuple[float, Any, float]]
) -> None:
    assert outage, "no /healthz probe during the outage"
    statuses = {status for _, status, _ in outage}
    assert statuses == {503}, f"/healthz during the outage: {sorted(statuses, key=str)}"
    took = [t for _, _, t in seen]
    assert max(took) < 1.0, f"/healthz took {max(took):.2f}s"
    assert statistics.median(took) <= 0.1, f"/healthz median {statistics.median(took):.3f}s"
