"""A daemon of three paused with SIGSTOP (a GC pause, a frozen VM, a swap storm) at chosen
points, for over two leases: the rest of the cluster must keep calling, the paused daemon's
jobs must move, and once resumed it must start no call for a job it lost.

Issue 18 saw, with the same faults: the whole cluster idle for as long as a daemon was paused
holding the limiter row (its pipeline-mode transaction is never ended by the server); the
jobs of a daemon paused mid-renewal never taken over (the rows its open transaction locked
are skipped by every claim); and a daemon resumed after a pause starting calls for jobs
another daemon had taken over and committed. The slow variants (90 s pauses, ten runs at a
random moment) and their figures are ``bench/bench_chaos.py``.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from pg import PgServer

from cluster.chaos import LIMITER_ROW, Feeder, Record, cluster, pause_holding, poll

K = 2
LEASE_S = 2.0
POLL_S = 0.5
PAUSE_S = 2 * LEASE_S + 1.0
"""Past one lease plus one poll and the takeover's slack: the paused daemon's claims and tokens
lapse and are taken over while it is stopped."""
QUIET_BOUND_S = LEASE_S + 1.0
"""The longest the others may go without a call: the paused daemon's tokens are theirs again
after one lease; the lock it held is freed by the server sooner (``lease_s / 2``)."""
TAKEOVER_BOUND_S = LEASE_S + POLL_S + 2.0
SETTINGS = {"max_concurrent": K, "lease_s": LEASE_S, "poll_s": POLL_S, "max_active_jobs": 2}


def _checks(record: Record, jobs: list[str]) -> None:
    """What holds after every fault: each job ended once, nothing called by a loser of its
    claim, nothing called after its document was committed."""
    assert not record.not_ended_once(jobs), record.not_ended_once(jobs)
    assert not record.calls_after_replacement(), record.calls_after_replacement()
    assert not record.calls_after_commit(), record.calls_after_commit()


def _rest_kept_calling(record: Record, others: list[str], start: float, end: float) -> None:
    quiet = record.longest_quiet(others, start, end)
    assert quiet <= QUIET_BOUND_S, (
        f"the rest of the cluster made no call for {quiet:.1f}s (bound {QUIET_BOUND_S:g}s) "
        "while one daemon was paused"
    )


def test_paused_holding_the_limiter_lock_does_not_stop_the_cluster(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    with cluster(pg_server, pg_url, tmp_path, **SETTINGS) as c:
        a = c.by_name("a")
        with Feeder(c, c.members[1:], "l") as feed:
            poll(lambda: sum(len(m.calls()) for m in c.members) >= 6, 30, "calls flowing")
            paused_at = pause_holding(
                pg_url,
                a,
                **LIMITER_ROW,
            )
            threading.Event().wait(PAUSE_S)
            resumed_at = time.time()
            a.resume()
        jobs = feed.jobs
        assert c.all_ended(jobs, 90), c.states()
        record = c.record()
    _rest_kept_calling(record, ["b", "c"], paused_at, resumed_at)
    _checks(record, jobs)


def test_paused_while_renewing_its_jobs_move_within_a_lease(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    with cluster(pg_server, pg_url, tmp_path, **SETTINGS) as c:
        a = c.by_name("a")
        with Feeder(c, c.members[1:], "r") as feed:
            first = poll(lambda: c.holdings()["a"], 30, "daemon a holding claims")
            paused_at = pause_holding(
                pg_url,
                a,
                table="briefd_jobs",
                lock_sql="SELECT 1 FROM briefd_jobs WHERE job_id = %s FOR UPDATE",
                lock_args=(first[-1],),
                query_has="SET lease_until = now() + make_interval",  # the renewal
                prove=False,  # stopped mid-renewal: what it still holds is the daemon's design
            )
            held = c.holdings()["a"]
            assert held, "daemon a held nothing when paused"
            threading.Event().wait(PAUSE_S)
            resumed_at = time.time()
            a.resume()
        jobs = feed.jobs
        assert c.all_ended(jobs, 90), c.states()
        record = c.record()
    slow = {
        j: t - paused_at
        for j in held
        if (t := record.first_claim_by_other(j, "a", paused_at) or resumed_at) - paused_at
        > TAKEOVER_BOUND_S
    }
    assert not slow, f"taken over later than {TAKEOVER_BOUND_S:g}s after the pause: {slow}"
    _rest_kept_calling(record, ["b", "c"], paused_at, resumed_at)
    _checks(record, jobs)


def test_paused_at_a_random_moment_starts_no_call_for_a_lost_job(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with cluster(pg_server, pg_url, tmp_path, **SETTINGS) as c:
        a = c.by_name("a")
        with Feeder(c, c.members[1:], "p") as feed:
            poll(lambda: sum(len(m.calls()) for m in c.members) >= 4, 30, "calls flowing")
            threading.Event().wait(rng.uniform(0.0, 1.0))
            poll(a.busy, 10, "a call of daemon a on the wire")  # it has a run to lose
            held = c.holdings()["a"]
            a.pause()
            paused_at = time.time()
            threading.Event().wait(PAUSE_S)
            resumed_at = time.time()
            a.resume()
        jobs = feed.jobs
        assert c.all_ended(jobs, 90), (seed, c.states())
        record = c.record()
    taken = [j for j in held if record.first_claim_by_other(j, "a", paused_at)]
    assert taken, f"none of a's jobs {held} was taken over during a {PAUSE_S:g}s pause"
    _rest_kept_calling(record, ["b", "c"], paused_at, resumed_at)
    _checks(record, jobs)
