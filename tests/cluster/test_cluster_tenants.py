"""Tenants on two ``briefd serve`` processes sharing one PostgreSQL database.

A key made by ``briefd key create`` against the database works on both daemons;
once revoked it is refused by both within 5 s (each daemon's cache of verified
keys lapses on its own: no message between them). Two tenants' jobs with the
same id run apart across the cluster, and a tenant held by its budget has none
of its jobs claimed by either daemon while another tenant's run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, make_job, wait_for
from tenants.helpers import call, new_key

from briefd.sim.server import SimProfile, SimServer

REVOKED_WITHIN_S = 5.0


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


def test_keys_and_tenants_are_the_clusters(sim: SimServer, pg_url: str, tmp_path: Path) -> None:
    daemons = [
        Daemon(tmp_path / f"d{i}", sim.base_url, database_url=pg_url, lease_s=3, poll_s=0.5)
        for i in range(2)
    ]
    for d in daemons:
        d.tmp.mkdir()
    try:
        for d in daemons:
            d.start()
        first, second = daemons
        first.cli("tenant", "add", "acme")
        second.cli("tenant", "add", "beta")  # either daemon's configuration: one database
        first.cli("tenant", "add", "poor", "--daily-budget-usd", "0")
        a = new_key(second, "acme", "submit,read")
        b = new_key(first, "beta", "submit,read")
        poor = new_key(first, "poor", "submit,read")

        def held_everywhere() -> bool:
            return all(
                'briefd_tenant_budget_held{tenant="poor"} 1.0'
                in call(d, d.token, "GET", "/metrics").text
                for d in daemons
            )

        assert wait_for(held_everywhere, 15), "each daemon reads the tenants every few seconds"
        assert call(second, poor, "POST", "/v1/jobs", make_job("held")).status_code == 202
        for key, d in ((a, first), (b, second)):
            assert call(d, key, "POST", "/v1/jobs", make_job("same")).status_code == 202
        for key, d in ((a, second), (b, first)):  # each read on the other daemon

            def done(key: str = key, d: Daemon = d) -> Any:
                r = call(d, key, "GET", "/v1/jobs/same/result?wait=5")
                return r.json() if r.status_code == 200 else None

            result = wait_for(done, 60)
            assert result and result["status"] == "succeeded", first.log() + second.log()
        for d in daemons:
            assert call(d, poor, "GET", "/v1/jobs/held").json()["status"] == "queued"
            assert call(d, a, "GET", "/v1/jobs/held").status_code == 404

        key_id = a.split("_")[1]
        second.cli("key", "revoke", key_id)
        revoked_at = time.monotonic()

        def refused_everywhere() -> bool:
            return all(call(d, a, "GET", "/v1/jobs").status_code == 401 for d in daemons)

        assert wait_for(refused_everywhere, REVOKED_WITHIN_S, 0.1), "refused within 5 s"
        assert time.monotonic() - revoked_at <= REVOKED_WITHIN_S
        assert call(first, b, "GET", "/v1/jobs").status_code == 200, "other keys still work"
    finally:
        for d in daemons:
            d.stop()
