"""One daemon of two cut off from PostgreSQL for over two leases, through a TCP proxy that
drops every packet (a partition) or resets every connection, while it runs jobs.

What the issue asks of a daemon that cannot prove its claims: it starts no call once its last
confirmed renewal has run out (so none for a job another daemon took over and committed);
``/healthz`` answers at once, and says 503 while it is cut off, 200 again when it is back;
the other daemon takes its jobs over and keeps calling, even when the cut-off daemon was
holding the limiter row when the line went dead. Issue 18 saw, on the same faults, calls
started 13 s and 21 s after the job was taken over and committed (documents bought twice), a
``/healthz`` that kept answering 200 or did not answer within 5 s, and the cluster idle for
6.9 s behind the cut-off daemon's lock.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest
from pg import PgServer

from cluster.chaos import LIMITER_ROW, Feeder, HealthProbe, act_holding, cluster, poll

K = 2
LEASE_S = 2.0
POLL_S = 0.5
CUT_S = 2 * LEASE_S + 1.0
QUIET_BOUND_S = LEASE_S + 1.0
"""The cut-off daemon's tokens are the others' after one lease; its lock is freed sooner."""
HEALTHZ_SLOW_S = 1.0
"""No single answer may take longer (a blocked database round trip takes seconds); the
median is held to the issue's 100 ms, and measured in ``bench/bench_chaos.py``."""
SETTINGS = {"max_concurrent": K, "lease_s": LEASE_S, "poll_s": POLL_S, "max_active_jobs": 2}


@pytest.mark.parametrize("mode", ["drop", "reset"])
def test_a_daemon_cut_off_from_the_database_stops_and_says_so(
    mode: str, pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    with cluster(pg_server, pg_url, tmp_path, ("a", "b"), proxied=("a",), **SETTINGS) as c:
        a, b = c.members
        assert a.proxy is not None
        proxy = a.proxy
        with Feeder(c, [b], mode) as feed:
            poll(lambda: len(a.calls()) >= 2 and len(b.calls()) >= 2, 30, "both daemons calling")
            with HealthProbe(a.daemon.url) as probe:
                if mode == "drop":  # dead while the limiter row is its: the worst moment
                    cut_at = act_holding(
                        pg_url,
                        a,
                        lambda: proxy.set("drop"),
                        lambda: proxy.set("pass"),
                        **LIMITER_ROW,
                    )
                else:
                    poll(a.busy, 10, "a call of daemon a on the wire")
                    proxy.set("reset")
                    cut_at = time.time()
                held = c.holdings()["a"]
                threading.Event().wait(CUT_S)
                healed_at = time.time()
                proxy.set("pass")
                poll(
                    lambda: probe.seen and probe.seen[-1][1] == 200,
                    5 * LEASE_S,
                    "daemon a healthy again once the database is reachable",
                )
            sick = probe.between(cut_at + LEASE_S, healed_at)
        jobs = feed.jobs
        assert c.all_ended(jobs, 60), c.states()
        record = c.record()

    assert held, "daemon a held no job when cut off: the test proves nothing"
    taken = [j for j in held if record.first_claim_by_other(j, "a", cut_at)]
    assert taken == held, f"a's jobs {held}, taken over: {taken}"
    late = [
        f"{x.job_id}/{x.stage} {x.start - cut_at:.1f}s after the cut"
        for x in record.calls
        if x.member == "a" and cut_at + LEASE_S < x.start < healed_at
    ]
    assert not late, f"calls started by a daemon that could not prove its claims: {late}"
    assert sick, "no /healthz probe while cut off"
    statuses = {status for _, status, _ in sick}
    assert statuses == {503}, f"/healthz while cut off: {sorted(statuses, key=str)}"
    took = [t for _, _, t in probe.seen]
    assert max(took) < HEALTHZ_SLOW_S, f"/healthz took {max(took):.2f}s"
    assert statistics.median(took) <= 0.1, f"/healthz median {statistics.median(took):.3f}s"
    quiet = record.longest_quiet(["b"], cut_at, healed_at)
    assert quiet <= QUIET_BOUND_S, f"daemon b made no call for {quiet:.1f}s"
    assert not record.not_ended_once(jobs), record.not_ended_once(jobs)
    assert not record.calls_after_replacement(), record.calls_after_replacement()
    assert not record.calls_after_commit(), record.calls_after_commit()
