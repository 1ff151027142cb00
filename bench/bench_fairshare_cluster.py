"""The tenants' fair share across three daemons of a cluster (issue 23), through PostgreSQL.

    .venv/bin/python bench/bench_fairshare_cluster.py [--daemons 3] [--seconds 60] [--rounds 2]

Each daemon is a **separate process** with its own ``ClusterTokens`` (as in
``bench_cluster_grants.py``), K=2 for the cluster. Every daemon keeps ``--depth``
requests of each of three tenants (weights 1:2:3) waiting, so all three saturate
the service from every daemon; a grant is held for a simulated call of
``--call-ms`` (the simulator's stage at 1/100 scale is 50-70 ms) and released with
the tokens it "used" (a different share of its estimate per tenant, so the shares
are right only if releases settle them). Grant rounds are run by every daemon in
turn, as their limiters do. Printed: each tenant's share of the tokens used while
all were saturated (after a warm-up), against 1:2:3, and Jain's fairness index on
the weight-normalised shares (target >= 0.95); medians of ``--rounds``; the load.
The issue's 10 minutes are shortened to ``--seconds`` to run in minutes here.
A throwaway server is started from ``tests/pg.py`` unless ``--url`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = {"t1": 1.0, "t2": 2.0, "t3": 3.0}
EST = {"t1": 900, "t2": 400, "t3": 600}  # tokens estimated per call
USED = {"t1": 0.3, "t2": 0.9, "t3": 0.6}  # of the estimate, used


def worker(url: str, daemon_id: str, start_at: float, args: dict[str, float]) -> dict[str, Any]:
    """One daemon: each tenant's ``depth`` requests waiting, grants held ``call_ms``."""
    import threading

    from briefd.cluster.records import HeldLease
    from briefd.cluster.tokens import ClusterTokens
    from briefd.messages.token import RequestToken

    tokens = ClusterTokens(url, daemon_id, lease_s=15.0)
    tokens.register()
    waiting: dict[str, int] = dict.fromkeys(WEIGHTS, 0)
    held: list[tuple[float, HeldLease, str]] = []  # (release at, lease, tenant)
    used: dict[str, int] = dict.fromkeys(WEIGHTS, 0)
    n = 0
    pause = threading.Event()
    now = time.time()
    if start_at > now:
        pause.wait(start_at - now)  # every process starts together
    t0 = time.monotonic()
    count_from, end = t0 + args["warmup"], t0 + args["warmup"] + args["seconds"]
    beat_at = t0
    while time.monotonic() < end:
        if time.monotonic() - beat_at > 2.0:  # as the limiter's RenewTokens: else its waits
            tokens.heartbeat()  # and leases are reaped after lease_s
            beat_at = time.monotonic()
        for tenant, w in WEIGHTS.items():
            while waiting[tenant] < args["depth"]:
                n += 1
                req = RequestToken(
                    job_id=f"{tenant}-{daemon_id}-{n}", stage="S",
                    requester=f"{daemon_id}-{n}", est_tokens=EST[tenant], tenant=tenant,
                    weight=w,
                )  # fmt: skip
                tokens.enqueue(req, age_s=0.0)
                waiting[tenant] += 1
        now_m = time.monotonic()
        for g in list(tokens.grant().mine) + tokens.take_grants():
            tenant = g.job_id.split("-", 1)[0]
            waiting[tenant] -= 1
            lease = HeldLease(
                g.lease_id, g.wait_id, g.requester, g.job_id, g.stage, g.epoch, g.est_tokens, now_m
            )
            held.append((now_m + args["call_ms"] / 1000, lease, tenant))
        now_m = time.monotonic()
        due = [h for h in held if h[0] <= now_m]
        held = [h for h in held if h[0] > now_m]
        for _, lease, tenant in due:
            spent = int(EST[tenant] * USED[tenant])
            tokens.release(lease, outcome="success", elapsed_s=0.05, used_tokens=spent)
            if now_m >= count_from:
                used[tenant] += spent
        pause.wait(0.003)
    tokens.leave()
    tokens.close()
    return {"used": used}


def run(url: str, daemons: int, args: dict[str, float]) -> dict[str, int]:
    import psycopg

    from briefd.cluster.tokens import ClusterTokens

    setup = ClusterTokens(url, "bench-setup")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("briefd_token_waits", "briefd_tokens", "briefd_daemons"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM briefd_limiter_endpoints")
    setup.configure(2, adaptive=False)
    setup.close()
    start_at = time.time() + 1.5
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, f"d{i}", str(start_at), json.dumps(args)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(daemons)
    ]
    total: dict[str, int] = dict.fromkeys(WEIGHTS, 0)
    for c in children:
        out = json.loads(c.communicate(timeout=args["seconds"] + args["warmup"] + 120)[0])
        for tenant, v in out["used"].items():
            total[tenant] += v
    return total


def jain(used: dict[str, int]) -> tuple[float, dict[str, float]]:
    total, wsum = sum(used.values()), sum(WEIGHTS.values())
    shares = {t: used[t] / total for t in WEIGHTS}
    norm = [shares[t] / (WEIGHTS[t] / wsum) for t in WEIGHTS]
    return sum(norm) ** 2 / (len(norm) * sum(x * x for x in norm)), shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemons", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--depth", type=float, default=2, help="requests waiting per tenant, daemon")
    ap.add_argument("--call-ms", type=float, default=60.0)
    ap.add_argument("--url", help="a PostgreSQL URL (default: a throwaway server)")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        url, daemon_id, start_at, params = a.worker
        sys.stdout.write(json.dumps(worker(url, daemon_id, float(start_at), json.loads(params))))
        return
    params = {"seconds": a.seconds, "warmup": a.warmup, "depth": a.depth, "call_ms": a.call_ms}
    server, url = None, a.url
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from pg import PgServer, server_bindir, server_user

        server = PgServer(
            server_bindir(), Path(tempfile.mkdtemp(prefix="briefd-pg-")), server_user()
        )
        server.start()
        server.admin('CREATE DATABASE "bench"')
        url = server.url("bench")
    try:
        print(
            f"{a.daemons} daemons (processes) on one PostgreSQL, K=2, tenants 1:2:3, "
            f"{a.seconds:g} s measured after {a.warmup:g} s, calls {a.call_ms:g} ms; "
            "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        )
        indexes, per = [], {t: [] for t in WEIGHTS}
        for r in range(a.rounds):
            used = run(url, a.daemons, params)
            index, shares = jain(used)
            indexes.append(index)
            for t in WEIGHTS:
                per[t].append(shares[t])
            print(
                f"   round {r + 1}: "
                + ", ".join(f"{t} {used[t]} tokens ({shares[t]:.3f})" for t in WEIGHTS)
                + f"; Jain {index:.4f}; load {os.getloadavg()[0]:.1f}"
            )
        wsum = sum(WEIGHTS.values())
        for t, w in WEIGHTS.items():
            s = statistics.median(per[t])
            off = s / (w / wsum) - 1
            print(f"   {t} weight {w:.0f}: share {s:.3f} vs {w / wsum:.3f} ({off:+.1%})")
        print(
            f"   Jain's index on weight-normalised shares: {statistics.median(indexes):.4f} "
            f"(median of {a.rounds}; target >= 0.95)"
        )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
