"""The chaos suite's slow variants, with the figures issue 18 asks for.

Run: ``python bench/bench_chaos.py [--pause 90] [--runs 10] [--kills 3]``. It starts a
throwaway PostgreSQL (``tests/pg.py``) and, for each measurement, three ``briefd serve``
daemons on a fresh database, each calling a simulated OpenAI server of its own
(``tests/cluster/chaos.py``), with the issue's load: K=2, lease 3 s, poll 0.5 s, stages of
0.3-0.7 s, jobs submitted so that two always wait unclaimed while a fault lasts.

* **paused holding the limiter lock**: daemon a is stopped (SIGSTOP) while its transaction
  holds its endpoint's limiter row (landed with ``pgrowlocks``), for ``--pause`` seconds:
  the longest time the two others had no call on the wire (target: lease + 2 s);
* **paused while renewing**: stopped mid-renewal of its claims: seconds until its jobs are
  taken over (target: lease + poll + 2 s), the pause ending 2 s after the last one;
* **paused at a random moment**, 9 s, ``--runs`` times: runs where the resumed daemon
  started a call for a job another daemon had taken over, and takeover times;
* **cut off** (the proxy drops, then resets) for 3 x lease: calls started for lost jobs,
  stages called after their commit (targets: 0 and 0), and how fast the cut-off daemon's
  ``/healthz`` answers, probed every 0.1 s (target: 100 ms);
* **kill -9 at the defaults** (no lease or poll set): seconds until another daemon claims
  the killed daemon's job (target: 7 s), ``--kills`` rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster.chaos import (
    LIMITER_ROW,
    Cluster,
    Feeder,
    HealthProbe,
    act_holding,
    cluster,
    pause_holding,
    poll,
)
from pg import PgServer, server_bindir, server_user

from briefd.sim.server import Fault

K, LEASE_S, POLL_S = 2, 3.0, 0.5
SETTINGS: dict[str, Any] = {
    "max_concurrent": K,
    "lease_s": LEASE_S,
    "poll_s": POLL_S,
    "max_active_jobs": 3,
}
SCALE = 0.08
"""Stages of 0.4-0.56 s at the simulator's 5-7 s profile."""
LIMITER = LIMITER_ROW


class Bench:
    def __init__(self, server: PgServer, tmp: Path) -> None:
        self.server, self.tmp = server, tmp

    def run(self, names: tuple[str, ...] = ("a", "b", "c"), **settings: Any) -> Any:
        name = f"chaos_{uuid.uuid4().hex[:10]}"
        self.server.admin(f'CREATE DATABASE "{name}"')
        folder = self.tmp / name
        folder.mkdir()
        proxied = settings.pop("proxied", ())
        return cluster(
            self.server,
            self.server.url(name),
            folder,
            names,
            proxied=proxied,
            scale=SCALE,
            **settings,
        )


def _warm(c: Cluster) -> None:
    poll(lambda: sum(len(m.calls()) for m in c.members) >= 4, 60, "calls flowing")


def paused_holding_lock(b: Bench, pause_s: float) -> float:
    with b.run(**SETTINGS) as c:
        a = c.by_name("a")
        with Feeder(c, c.members[1:], "l", depth=2):
            _warm(c)
            paused_at = pause_holding(c.url, a, **LIMITER)
            threading.Event().wait(pause_s)
            resumed_at = time.time()
            a.resume()
        record = c.record()
    return record.longest_quiet(["b", "c"], paused_at, resumed_at)


def paused_renewing(b: Bench, pause_s: float) -> float:
    with b.run(**SETTINGS) as c:
        a = c.by_name("a")
        with Feeder(c, c.members[1:], "r", depth=2):
            first = poll(lambda: c.holdings()["a"], 60, "a holding claims")
            paused_at = pause_holding(
                c.url,
                a,
                table="briefd_jobs",
                lock_sql="SELECT 1 FROM briefd_jobs WHERE job_id = %s FOR UPDATE",
                lock_args=(first[-1],),
                query_has="SET lease_until = now() + make_interval",
                prove=False,
            )
            held = set(c.holdings()["a"])
            deadline = paused_at + pause_s
            while time.time() < deadline and held & set(c.holdings()["a"]):
                threading.Event().wait(0.05)
            threading.Event().wait(min(2.0, max(0.0, deadline - time.time())))
            resumed_at = time.time()
            a.resume()
        record = c.record()
    times = [
        (record.first_claim_by_other(j, "a", paused_at) or resumed_at) - paused_at for j in held
    ]
    return max(times) if times else float("nan")


def paused_random(b: Bench, seed: int) -> tuple[int, float]:
    """Calls for lost jobs after a 9 s pause at a random moment; the slowest takeover."""
    rng = random.Random(seed)
    with b.run(**SETTINGS) as c:
        a = c.by_name("a")
        with Feeder(c, c.members[1:], "p", depth=2):
            _warm(c)
            threading.Event().wait(rng.uniform(0.0, 3.0))
            poll(a.busy, 20, "a call of a on the wire")
            held = c.holdings()["a"]
            a.pause()
            paused_at = time.time()
            threading.Event().wait(9.0)
            a.resume()
            threading.Event().wait(3.0)  # what it does once resumed
        record = c.record()
    took = [t - paused_at for j in held if (t := record.first_claim_by_other(j, "a", paused_at))]
    return len(record.calls_after_replacement()), max(took, default=float("nan"))


def cut_off(b: Bench, mode: str) -> tuple[int, int, list[float]]:
    """Calls for lost jobs, stages called after their commit, /healthz answer times (s)."""
    with b.run(proxied=("a",), **SETTINGS) as c:
        a = c.by_name("a")
        assert a.proxy is not None
        proxy = a.proxy
        with Feeder(c, c.members[1:], mode, depth=2), HealthProbe(a.daemon.url) as probe:
            _warm(c)
            if mode == "drop":
                act_holding(
                    c.url, a, lambda: proxy.set("drop"), lambda: proxy.set("pass"), **LIMITER
                )
            else:
                poll(a.busy, 20, "a call of a on the wire")
                proxy.set("reset")
            threading.Event().wait(3 * LEASE_S)
            proxy.set("pass")
            threading.Event().wait(3.0)
        record = c.record()
    took = [t for _, _, t in probe.seen]
    return len(record.calls_after_replacement()), len(record.calls_after_commit()), took


def kill_at_defaults(b: Bench, n: int) -> float:
    """kill -9 the daemon holding a hung call; seconds until another claims the job."""
    with b.run(max_concurrent=K) as c:  # the defaults: no lease, no poll given
        victim_job = f"k{n}-hang"
        for m in c.members:
            m.sim.inject(Fault(job_id=victim_job, stage="BRIEFING_MD", hang=True))
        c.submit([victim_job, *(f"k{n}-{i}" for i in range(5))])
        holder = poll(lambda: next((m for m in c.members if m.busy()), None), 60, "hung call")
        holder.daemon.kill()
        killed = time.time()
        others = [m for m in c.members if m is not holder]

        def taken() -> float | None:
            for m in others:
                for e in m.daemon.events("JobClaimed"):
                    if e.get("job_id") == victim_job and e.get("taken_over"):
                        return float(e["ts"]) - killed
            return None

        return float(poll(taken, 120, "the killed daemon's job taken over"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pause", type=float, default=90.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    server = PgServer(
        server_bindir(), Path(tempfile.mkdtemp(prefix="briefd-pg-", dir="/tmp")), server_user()
    )
    server.start()
    b = Bench(server, Path(tempfile.mkdtemp(prefix="briefd-chaos-")))
    began = time.monotonic()
    try:
        gap = paused_holding_lock(b, args.pause)
        renew = paused_renewing(b, args.pause)
        randoms = [paused_random(b, seed) for seed in range(args.runs)]
        cuts = {mode: cut_off(b, mode) for mode in ("drop", "reset")}
        kills = [kill_at_defaults(b, n) for n in range(args.kills)]
    finally:
        server.stop()
    after = os.getloadavg()
    print(
        f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start, "
        f"{after[0]:.2f} {after[1]:.2f} {after[2]:.2f} at the end; {os.cpu_count()} cores; "
        f"{time.monotonic() - began:.0f} s in all"
    )
    print(f"3 daemons, K={K}, lease {LEASE_S:g} s, poll {POLL_S:g} s, stages 0.4-0.56 s")
    print(
        f"paused {args.pause:g} s holding the limiter lock: the others' longest gap without a "
        f"call {gap:.2f} s (target <= {LEASE_S + 2:g} s)"
    )
    print(
        f"paused while renewing: its jobs taken over after {renew:.2f} s "
        f"(target <= {LEASE_S + POLL_S + 2:g} s)"
    )
    lost = [n for n, _ in randoms]
    took = [t for _, t in randoms if t == t]
    print(
        f"paused 9 s at a random moment, {args.runs} runs: runs with calls for lost jobs "
        f"{sum(1 for n in lost if n)}, such calls {sum(lost)}; takeover median "
        f"{statistics.median(took):.2f} s, max {max(took):.2f} s"
    )
    for mode, (lost_calls, rebought, took) in cuts.items():
        ms = sorted(t * 1000 for t in took)
        print(
            f"cut off ({mode}) for {3 * LEASE_S:g} s: calls started for lost jobs {lost_calls}, "
            f"stages called after their commit {rebought} (targets 0, 0); /healthz of the cut-off "
            f"daemon, {len(ms)} answers: median {statistics.median(ms):.1f} ms, p95 "
            f"{ms[int(0.95 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms (target 100 ms)"
        )
    print(
        f"kill -9 at the defaults: takeover median {statistics.median(kills):.2f} s, max "
        f"{max(kills):.2f} s over {len(kills)} rounds: {', '.join(f'{t:.2f}' for t in kills)} "
        "(target <= 7 s)"
    )


if __name__ == "__main__":
    main()
