"""Grants per second through PostgreSQL: the cluster token budget, 1 to 4 daemons, 1 or 2 endpoints.

Each daemon is a **separate process** (its own ``ClusterTokens`` and pool, one
thread, as the limiter actor is one thread) that keeps K requests outstanding and
releases each grant at once (no call in between): enqueue, grant round, take the
grants other daemons made for it, release. So the figure is the database's
ceiling on grant/release cycles, not a provider's. Latency is enqueue -> grant
read by its daemon.

Each endpoint has its own limiter row, locked by its grant rounds; the global K
is kept by slot rows every round takes with ``SKIP LOCKED``. So with two
endpoints (half the daemons ask for "A", half for "B") rounds for the two run in
parallel, where with one every round waits for the row. The pairs (2 and 4
daemons, K=16, 1 or 2 endpoints) differ only in that, and the ratio of their
grants/s is printed (issue 17's target: at least 1.6).

Configurations run interleaved, ``--rounds`` times each, ``--seconds`` each; the
medians over rounds are printed with the machine's load. A throwaway server is
started from ``tests/pg.py`` (Debian's binaries), unless ``--url`` names one::

    .venv/bin/python bench/bench_cluster_grants.py --rounds 3 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from common import database_url

CONFIGS = (
    (1, 2, 1),
    (1, 16, 1),
    (3, 2, 1),
    (3, 16, 1),
    (2, 16, 1),
    (2, 16, 2),
    (4, 16, 1),
    (4, 16, 2),
)
"""(daemons, K, endpoints): daemon i asks for endpoint "AB"[i % endpoints]."""


def worker(
    url: str, daemon_id: str, k: int, start_at: float, seconds: float, endpoint: str
) -> dict[str, Any]:
    """One daemon: K requests for ``endpoint`` outstanding, each grant released at once, for
    ``seconds``."""
    from briefd.cluster.records import HeldLease
    from briefd.cluster.tokens import ClusterTokens
    from briefd.messages.token import RequestToken

    tokens = ClusterTokens(url, daemon_id, lease_s=15.0)
    tokens.register()
    sent: dict[int, float] = {}
    latencies: list[float] = []
    n = 0
    now = time.time()
    if start_at > now:
        time.sleep(start_at - now)  # a benchmark script, not the library: all start together
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(sent) < k:
            n += 1
            req = RequestToken(
                job_id=f"j{n}", stage="S", endpoint=endpoint, requester=f"{daemon_id}-{n}"
            )
            sent[tokens.enqueue(req, age_s=None)] = time.monotonic()
        grants = list(tokens.grant(endpoint).mine) + tokens.take_grants()
        got = time.monotonic()
        for g in grants:
            latencies.append(got - sent.pop(g.wait_id))
            held = HeldLease(
                g.lease_id, g.wait_id, g.requester, g.job_id, g.stage, g.epoch, 0, got, g.endpoint
            )
            tokens.release(held, outcome="success", elapsed_s=0.0)
    tokens.leave()
    tokens.close()
    return {"grants": len(latencies), "latencies": latencies, "seconds": seconds}


def run(url: str, daemons: int, k: int, endpoints: int, seconds: float) -> dict[str, float]:
    """One configuration: reset the tables, start the daemons' processes, merge their figures."""
    import psycopg

    from briefd.cluster.tokens import ClusterTokens

    setup = ClusterTokens(url, "bench-setup")  # makes the schema on first use
    with psycopg.connect(url, autocommit=True) as conn:
        tables = (
            "briefd_token_waits",
            "briefd_tokens",
            "briefd_daemons",
            "briefd_limiter_endpoints",
        )
        for table in tables:
            conn.execute(f"DELETE FROM {table}")
    setup.configure(k, adaptive=False)
    setup.close()
    start_at = time.time() + 1.5  # every process connected by then
    children = []
    for i in range(daemons):
        endpoint = "AB"[i % endpoints]
        argv = ["--worker", url, f"d{i}", str(k), str(start_at), str(seconds), endpoint]
        children.append(
            subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
        )
    results = [json.loads(c.communicate(timeout=seconds + 60)[0]) for c in children]
    lat = sorted(x for r in results for x in r["latencies"])
    total = sum(r["grants"] for r in results)
    return {
        "grants_per_s": total / seconds,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--url", help="a PostgreSQL URL (default: a throwaway server)")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        url, daemon_id, k, start_at, seconds, endpoint = args.worker
        out = worker(url, daemon_id, int(k), float(start_at), float(seconds), endpoint)
        sys.stdout.write(json.dumps(out))
        return
    with database_url(args.url) as url:
        _bench(url, args.rounds, args.seconds)


def _bench(url: str, rounds: int, seconds: float) -> None:
    samples: dict[tuple[int, int, int], list[dict[str, float]]] = {c: [] for c in CONFIGS}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for daemons, k, endpoints in CONFIGS:  # interleaved: a slow minute hurts all alike
            samples[(daemons, k, endpoints)].append(run(url, daemons, k, endpoints, seconds))
            loads.append(os.getloadavg()[0])
    out = sys.stdout
    out.write(
        f"cluster grants through PostgreSQL: {rounds} round(s) x {seconds:g}s, daemons are "
        f"processes, medians over rounds; {os.cpu_count()} CPUs, load (1 min) "
        f"{min(loads):.1f}-{max(loads):.1f}\n"
    )
    out.write(
        f"{'daemons':>7} {'K':>3} {'endpoints':>9} {'grants/s':>9} {'p50 ms':>7} {'p99 ms':>7}\n"
    )
    medians = {}
    for config in CONFIGS:
        rows = samples[config]
        med = medians[config] = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        daemons, k, endpoints = config
        out.write(
            f"{daemons:>7} {k:>3} {endpoints:>9} {med['grants_per_s']:>9.0f} "
            f"{med['p50_ms']:>7.2f} {med['p99_ms']:>7.2f}\n"
        )
    for daemons, k, endpoints in CONFIGS:
        one = medians.get((daemons, k, 1))
        if endpoints == 2 and one:
            two = medians[(daemons, k, 2)]["grants_per_s"]
            out.write(
                f"{daemons} daemons, K={k}: two endpoints / one = "
                f"{two / one['grants_per_s']:.2f} (target >= 1.6)\n"
            )


if __name__ == "__main__":
    main()
