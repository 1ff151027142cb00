"""Three daemons on one PostgreSQL database: takeover time after kill -9, and grants per second.

Run: ``python bench/bench_takeover.py [--rounds 3] [--lease 5] [--poll 2] [--jobs 200]``.
It starts a throwaway PostgreSQL (``tests/pg.py``: Debian's binaries, a Unix socket in a
temporary folder), the simulated OpenAI server in this process, and ``briefd serve``
processes (``tests/daemon_helpers.py``). Two measurements:

* **takeover**: a job whose first call hangs holds a token on one daemon; that daemon is
  killed with SIGKILL; the time until another daemon claims the job (its ``JobClaimed``
  with ``taken_over``) is compared with one lease plus one poll, the bound the design gives;
* **grants per second**: ``--jobs`` jobs with instant answers (simulator scale 0), all
  submitted at once, through 1 daemon on SQLite (the reference: a local limiter, no
  database round trips), 1 daemon on PostgreSQL and 3 sharing the cluster's K tokens, in
  interleaved rounds: calls per second as the server saw them, and the server's peak in
  flight (never above K).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_helpers import Daemon, make_job, wait_for
from pg import PgServer, server_bindir, server_user

from briefd.config import Settings
from briefd.sim.server import Fault, SimProfile, SimServer


def _database(server: PgServer) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    server.admin(f'CREATE DATABASE "{name}"')
    return server.url(name)


def _daemons(
    tmp: Path, n: int, sim: SimServer, url: str | None, args: argparse.Namespace
) -> list[Daemon]:
    """``n`` daemons on database ``url`` (None: one on SQLite, the reference)."""
    db: dict[str, object] = {"database_url": url} if url else {}
    if url and args.lease is not None:
        db["lease_s"] = args.lease
    if url and args.poll is not None:
        db["poll_s"] = args.poll
    out = []
    for i in range(n):
        folder = tmp / f"d{i}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        out.append(
            Daemon(
                folder,
                sim.base_url,
                max_concurrent=args.k,
                log_level="INFO",
                **db,
            )
        )
    for d in out:
        d.start()
    return out


def takeover_round(daemons: list[Daemon], sim: SimServer, n: int) -> float:
    """Kill the holder of a hung call; seconds until another daemon claimed its job."""
    victim_job = f"t{n}-hang"
    sim.inject(Fault(job_id=victim_job, stage="BRIEFING_MD", hang=True))
    clients = [d.client() for d in daemons]
    ids = [victim_job, *(f"t{n}-{i}" for i in range(11))]
    for i, job_id in enumerate(ids):
        clients[i % len(clients)].submit(make_job(job_id))
    assert wait_for(
        lambda: any(r.job_id == victim_job and r.end is None for r in sim.stats().requests),
        30,
    )

    def holder() -> Daemon | None:
        for d in daemons:
            if any(e.get("job_id") == victim_job for e in d.events("JobClaimed")):
                return d
        return None

    victim = wait_for(holder, 10)
    assert victim is not None
    victim.kill()
    killed = time.time()

    def taken() -> float | None:
        for d in daemons:
            if d is victim:
                continue
            for e in d.events("JobClaimed"):
                if e.get("job_id") == victim_job and e.get("taken_over"):
                    return float(e["ts"]) - killed
        return None

    took = wait_for(taken, 120, 0.02)
    assert took is not None, "not taken over"
    live = [d for d in daemons if d is not victim]
    assert wait_for(
        lambda: all(
            c.status(j).status.value in ("succeeded", "partial", "failed")
            for c, j in [(live[0].client(), x) for x in ids]
        ),
        120,
        0.2,
    )
    victim.start()  # the same data dir, a new daemon id
    return float(took)


def idle_load(url: str, daemons: int, seconds: float) -> float:
    """Transactions per second per daemon on the database while ``daemons`` daemons idle
    (``pg_stat_database``: commits and rollbacks, the statements run alone included)."""
    import psycopg

    def count() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            ).fetchone()
        return int(row[0]) if row else 0

    time.sleep(2.0)  # a benchmark, not a test: let start-up settle
    before, began = count(), time.monotonic()
    time.sleep(seconds)
    after, took = count(), time.monotonic() - began
    return (after - before - 2) / took / daemons  # minus this function's own two reads


def throughput(daemons: list[Daemon], sim: SimServer, jobs: int, tag: str) -> tuple[float, int]:
    """Calls per second through ``daemons`` for ``jobs`` instant jobs, and the server's peak."""
    sim.reset()
    clients = [d.client() for d in daemons]
    began = time.monotonic()
    for i in range(jobs):
        clients[i % len(clients)].submit(make_job(f"{tag}-{i}"))
    total = jobs * 4
    assert wait_for(lambda: sim.stats().completed >= total, 300, 0.05), sim.stats().completed
    took = time.monotonic() - began
    return total / took, sim.stats().max_in_flight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease", type=float, default=None, help="default: the daemon's")
    parser.add_argument("--poll", type=float, default=None, help="default: the daemon's")
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle load window")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--k", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()
    server = PgServer(
        server_bindir(), Path(tempfile.mkdtemp(prefix="briefd-pg-", dir="/tmp")), server_user()
    )
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="briefd-bench-"))
    try:
        with SimServer(SimProfile(scale=0.02)) as sim:
            url = _database(server)
            three = _daemons(tmp, 3, sim, url, args)
            idle = idle_load(url, 3, args.idle_s)
            takeovers = [takeover_round(three, sim, n) for n in range(args.rounds)]
            for d in three:
                d.stop()
        with SimServer(SimProfile(scale=0.0)) as sim:
            lone = _daemons(tmp, 1, sim, None, args)
            one = _daemons(tmp, 1, sim, _database(server), args)
            three = _daemons(tmp, 3, sim, _database(server), args)
            groups = {"SQLite": lone, "1 daemon": one, "3 daemons": three}
            rates: dict[str, list[float]] = {name: [] for name in groups}
            peaks: list[int] = []
            for r in range(args.rounds):
                for name, ds in groups.items():
                    rate, peak = throughput(ds, sim, args.jobs, f"r{r}-{len(ds)}")
                    rates[name].append(rate)
                    peaks.append(peak)
            for d in (*lone, *one, *three):
                d.stop()
    finally:
        server.stop()
    defaults = Settings.load()
    args.lease = defaults.lease_s if args.lease is None else args.lease
    args.poll = defaults.poll_s if args.poll is None else args.poll
    bound = args.lease + args.poll
    print(f"machine load (1/5/15 min) at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; 2 cores")
    print(
        f"takeover after kill -9 (lease {args.lease:g} s, poll {args.poll:g} s, bound {bound:g} s):"
    )
    print(
        f"  median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s "
        f"over {len(takeovers)} rounds: {', '.join(f'{t:.2f}' for t in takeovers)}"
    )
    print(
        f"database load of an idle daemon (3 idle daemons, {args.idle_s:g} s): "
        f"{idle:.1f} transactions/s each"
    )
    print(f"grants per second (K={args.k} for the cluster, {args.jobs} jobs x 4 instant calls):")
    for name, values in rates.items():
        print(
            f"  {name:10s} median {statistics.median(values):7.1f} calls/s  "
            f"({', '.join(f'{v:.1f}' for v in values)})"
        )
    med = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"  3 daemons / 1 daemon: {med['3 daemons'] / med['1 daemon']:.2f}; "
        f"1 daemon on PostgreSQL / on SQLite: {med['1 daemon'] / med['SQLite']:.2f}; "
        f"server's peak in flight: {max(peaks)} (K={args.k})"
    )


if __name__ == "__main__":
    main()
