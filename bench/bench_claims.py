"""The cost of one claim on PostgreSQL: today's query against the fair one across tenants.

    .venv/bin/python bench/bench_claims.py [--queued 1000,10000] [--rounds 5] [--n 50]

A throwaway server (``tests/pg.py``) unless ``--url``; ``--queued`` ready jobs in
``briefd_jobs`` (and 8 claimed, as a daemon's window). Each sample runs the claim
statement (limit 1) in a transaction that is rolled back, so every sample sees the
same queue. Interleaved rounds, medians, of:

* ``fifo``: today's statement (one tenant configured: the daemon sends this one);
* ``fair/1``: the fair statement, every job one tenant's;
* ``fair/2``: the fair statement, jobs of two tenants (one with 99 % of them).

The load average is printed: the machine is shared.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
from pg import PgServer, server_bindir, server_user

from briefd.config import load_pipeline
from briefd.limits.order import PRIORITY_AGING_S
from briefd.store.pg_claims import _CLAIM, _FAIR_CLAIM
from briefd.store.postgres import PostgresStore


def _fill(url: str, queued: int, tenants: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE briefd_jobs CASCADE")
        rows = []
        for i in range(queued + 8):
            tenant = "b" if tenants == 2 and i % 100 == 99 else "a"
            rows.append((f"{tenant}.j{i}", "{}", "queued"))
        with (
            conn.cursor() as cur,
            cur.copy("COPY briefd_jobs (job_id, spec, state) FROM STDIN") as cp,
        ):
            for r in rows:
                cp.write_row(r)
        conn.execute(  # a daemon's window of 8, claimed
            "UPDATE briefd_jobs SET state = 'running', claimed_by = 'd', "
            "lease_until = now() + interval '1 hour', fence = 1 WHERE seq IN "
            "(SELECT seq FROM briefd_jobs ORDER BY seq LIMIT 8)"
        )
        conn.execute("ANALYZE briefd_jobs")


def _sample(url: str, sql: Any, weights: dict[str, float] | None, n: int) -> float:
    params = {
        "aging": PRIORITY_AGING_S,
        "limit": 1,
        "owner": "bench",
        "lease": 30.0,
        "lapsed": False,
        "held": [],
        "tenants": sorted(weights or {}),
        "weights": [1.0 for _ in weights or {}],
        "newcomers": False,
    }
    times = []
    with psycopg.connect(url) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(sql, params)
                assert cur.fetchall(), "nothing claimed"
            times.append(time.perf_counter() - t0)
            conn.rollback()
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=50, help="claims per sample")
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    server = None
    if args.url is None:
        server = PgServer(
            server_bindir(), Path(tempfile.mkdtemp(prefix="briefd-pg-")), server_user()
        )
        server.start()
    try:
        if server is not None:
            name = f"bench_{uuid.uuid4().hex[:10]}"
            server.admin(f'CREATE DATABASE "{name}"')
            url = server.url(name)
        else:
            url = args.url
        tmp = Path(tempfile.mkdtemp(prefix="briefd-claims-"))
        PostgresStore(url, load_pipeline(), jobs_dir=tmp).close()  # the schema
        for queued in (int(q) for q in args.queued.split(",")):
            cases: dict[str, list[float]] = {"fifo": [], "fair/1": [], "fair/2": []}
            for r in range(args.rounds):
                order = list(cases) if r % 2 == 0 else list(reversed(cases))
                for case in order:
                    _fill(url, queued, 2 if case == "fair/2" else 1)
                    sql = _CLAIM if case == "fifo" else _FAIR_CLAIM
                    weights = None if case == "fifo" else {"a": 1.0, "b": 1.0}
                    cases[case].append(_sample(url, sql, weights, args.n))
            load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
            shown = ", ".join(f"{c} {statistics.median(v):.2f} ms" for c, v in cases.items())
            print(f"{queued} queued: one claim (median of {args.rounds}): {shown}  ({load})")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
