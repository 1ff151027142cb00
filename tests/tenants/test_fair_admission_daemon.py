"""Admission is fair across tenants in a real ``briefd serve`` (SQLite, one daemon).

With ``max_active_jobs=2``, tenant ``acme`` queues a dozen jobs, then ``beta`` submits
one: beta's job starts before acme's backlog drains (before, the root's FIFO started
it after every one of acme's). Asserted on the order of ``JobStarted`` in the log and
on the queue beta found (``JobAccepted.queued``), never on time. One tenant keeps the
FIFO: tests/test_admission.py and tests/test_daemon_durability.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon, make_job, wait_for

from briefd.sim.server import SimProfile, SimServer
from tenants.helpers import call, new_key

from .test_tenants_daemon import wait_done

BACKLOG = 12


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


def test_a_tenants_single_job_starts_before_anothers_backlog_drains(
    sim: SimServer, tmp_path: Path
) -> None:
    d = Daemon(tmp_path, sim.base_url, max_concurrent=2, max_active_jobs=2)
    for name in ("acme", "beta"):
        d.cli("tenant", "add", name)
    d.start()
    try:
        a, b = new_key(d, "acme"), new_key(d, "beta")
        for i in range(BACKLOG):
            assert call(d, a, "POST", "/v1/jobs", make_job(f"bulk-{i}")).status_code == 202
        assert call(d, b, "POST", "/v1/jobs", make_job("urgent")).status_code == 202
        wait_done(d, b, "urgent")
        assert wait_for(lambda: len(d.events("JobCompleted")) >= BACKLOG + 1, 120), d.log()
        (accepted,) = [e for e in d.events("JobAccepted") if e["job_id"] == "beta.urgent"]
        waiting = accepted["queued"]  # acme's jobs waiting when beta's was admitted
        assert waiting >= BACKLOG // 2, f"too few of acme's jobs were waiting ({waiting})"
        started = [e["job_id"] for e in d.events("JobStarted")]
        assert len(started) == BACKLOG + 1, started
        after = started[started.index("beta.urgent") + 1 :]
        assert len(after) >= waiting - 1, (
            f"beta's job started after {started.index('beta.urgent')} of acme's; "
            f"{waiting} were waiting when it came: {started}"
        )
    finally:
        d.stop()
