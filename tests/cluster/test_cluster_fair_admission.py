"""A cluster's claims are fair across tenants: two ``briefd serve`` on one PostgreSQL.

Each daemon runs one job at a time (``max_active_jobs=1``). Tenant ``acme`` queues a
dozen jobs, then ``beta`` submits one: the next place that frees anywhere claims
beta's job, before acme's backlog drains (before, ``ORDER BY eff DESC, seq`` claimed
it after every one of acme's). Asserted on the order of claims (each claim draws the
next fencing token, so ``fence`` orders them) against what acme had claimed when
beta's job came, never on time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_helpers import HTTP, Daemon, make_job, wait_for

from briefd.sim.server import Fault, SimProfile, SimServer

BACKLOG = 12
SLOW = ("acme.bulk-0", "acme.bulk-1")


def cli(d: Daemon, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "briefd", *args],
        env=d.env,
        cwd=d.tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def new_key(d: Daemon, tenant: str) -> str:
    return cli(d, "key", "create", tenant, "--scopes", "submit,read")


def call(d: Daemon, key: str, method: str, path: str, body: Any = None) -> Any:
    return HTTP.request(
        method, f"{d.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


def test_a_tenants_single_job_is_claimed_before_anothers_backlog_drains(
    sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    daemons = [
        Daemon(
            tmp_path / f"d{i}",
            sim.base_url,
            database_url=pg_url,
            lease_s=3,
            poll_s=0.5,
            max_concurrent=2,
            max_active_jobs=1,
        )
        for i in range(2)
    ]
    for d in daemons:
        d.tmp.mkdir()
    first, second = daemons
    for slow in SLOW:  # the first two claimed: both places held
        sim.inject(Fault(job_id=slow, stage="BRIEFING_MD", delay_s=4.0))
    try:
        cli(first, "tenant", "add", "acme")
        cli(first, "tenant", "add", "beta")
        for d in daemons:
            d.start()
        a, b = new_key(first, "acme"), new_key(second, "beta")
        for i in range(BACKLOG):
            assert call(first, a, "POST", "/v1/jobs", make_job(f"bulk-{i}")).status_code == 202
        assert call(second, b, "POST", "/v1/jobs", make_job("urgent")).status_code == 202
        with psycopg.connect(pg_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM briefd_jobs WHERE job_id LIKE 'acme.%%' AND fence > 0"
            ).fetchone()
            assert row is not None
            claimed_before = int(row[0])  # acme's claimed by the time beta's was stored

            def b_claimed() -> bool:
                r = admin.execute(
                    "SELECT fence FROM briefd_jobs WHERE job_id = 'beta.urgent'"
                ).fetchone()
                return r is not None and int(r[0]) > 0

            assert wait_for(b_claimed, 30), first.log() + second.log()
            slow_ended_at_claim = sum(
                1
                for r in sim.stats().requests
                if r.job_id in SLOW and r.stage == "BRIEFING_MD" and r.end is not None
            )

            def all_done() -> bool:
                n = admin.execute(
                    "SELECT count(*) FROM briefd_jobs WHERE state = 'succeeded'"
                ).fetchone()
                return n is not None and int(n[0]) == BACKLOG + 1

            assert wait_for(all_done, 180), first.log() + second.log()
            order = [r[0] for r in admin.execute("SELECT job_id FROM briefd_jobs ORDER BY fence")]
        assert claimed_before <= BACKLOG // 2, f"acme's backlog was gone already: {order}"
        rank = order.index("beta.urgent")
        # Beta's goes first: at most one more of acme's (a place freed at that moment).
        assert rank <= claimed_before + 1, (
            f"beta's job was claim {rank + 1}; acme had {claimed_before} claimed when it "
            f"came: {order}"
        )
        # And at once, past the full daemons' windows: claimed while neither of acme's first
        # two had its last call (held 4 s by the simulator) answered: no place had freed.
        assert slow_ended_at_claim == 0, "beta's job waited for a place to free"
    finally:
        for d in daemons:
            d.stop()
