"""A job's event stream on any daemon of a PostgreSQL cluster.

Two ``briefd serve`` processes share one throwaway database; a job is submitted
to one of them and its stream is opened on both at once. Whichever daemon claims
and runs the job, the other one's client sees every event live (woken by
``NOTIFY briefd_events``), in the same order and with the same ids, to
JobCompleted; and a client resuming there with ``Last-Event-ID`` gets the rest.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import HTTP, Daemon, make_job
from sseclient import SSEClient

from briefd.sim.server import SimProfile, SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.1)) as server:
        yield server


def _follow(d: Daemon, job_id: str, out: list[dict[str, Any]], opened: list[float]) -> None:
    with HTTP.get(
        f"{d.url}/v1/jobs/{job_id}/events", headers=d.headers(), stream=True, timeout=(5, 60)
    ) as resp:
        opened.append(time.time())
        assert resp.status_code == 200, resp.text
        for e in SSEClient(resp.iter_content(chunk_size=None)).events():
            out.append({"id": int(e.id), "event": e.event, "data": json.loads(e.data)})


def _holder(daemons: list[Daemon], job_id: str) -> Daemon | None:
    for d in daemons:
        if any(e.get("job_id") == job_id for e in d.events("JobClaimed")):
            return d
    return None


def test_a_stream_on_another_daemon_sees_the_job_live(
    sim: SimServer, pg_url: str, tmp_path: Path
) -> None:
    daemons = [
        Daemon(tmp_path / name, sim.base_url, database_url=pg_url, lease_s=3, poll_s=0.5)
        for name in ("a", "b")
    ]
    for d in daemons:
        d.tmp.mkdir()
    try:
        for d in daemons:
            d.start()
        daemons[0].client().submit(make_job("cl-ev"))
        seen: list[list[dict[str, Any]]] = [[], []]
        opened: list[list[float]] = [[], []]
        threads = [
            threading.Thread(target=_follow, args=(d, "cl-ev", seen[i], opened[i]), daemon=True)
            for i, d in enumerate(daemons)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a stream did not end"
        holder = _holder(daemons, "cl-ev")
        assert holder is not None, "nobody claimed the job"
        other = 1 - daemons.index(holder)
        events = seen[other]
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["event"] == "JobCompleted"
        # the same stream on both daemons (StageProgress is transient: pruned at the job's
        # end, so a stream that caught up after it has gaps there)
        assert _kept(events) == _kept(seen[1 - other])
        live = [e for e in events if e["data"]["ts"] > opened[other][0]]
        assert any(e["event"] == "StageSucceeded" for e in live), "nothing arrived live"
        middle = events[len(events) // 2]["id"]
        with HTTP.get(
            f"{daemons[other].url}/v1/jobs/cl-ev/events",
            headers={**daemons[other].headers(), "Last-Event-ID": str(middle)},
            stream=True,
            timeout=(5, 30),
        ) as resp:
            rest = [int(e.id) for e in SSEClient(resp.iter_content(chunk_size=None)).events()]
        assert rest == [e["id"] for e in _kept(events) if e["id"] > middle]
    finally:
        for d in daemons:
            d.stop()


def _kept(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stream's events without StageProgress (pruned when the job ends)."""
    return [e for e in events if e["event"] != "StageProgress"]
