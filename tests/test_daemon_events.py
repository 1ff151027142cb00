"""Event streams of ``briefd serve`` (a real subprocess) against the simulator.

Each job's events come from the journal's event table as Server-Sent Events: a
client that disconnects resumes with ``Last-Event-ID`` and loses nothing; a
finished job's stream replays and ends (then 204); streams per token are
capped; a stream token opens its own job's stream and nothing else;
``briefd.Client().events`` reconnects across a daemon restart; ``submit --wait``
follows the stream.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from daemon_helpers import HTTP, Daemon, make_job, wait_for
from sseclient import SSEClient

from briefd.sim.server import SimProfile, SimServer

READ_S = 30.0


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """Stages of about a quarter of a second: a job runs long enough to be watched."""
    with SimServer(SimProfile(scale=0.05)) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("events"), sim.base_url, max_streams_per_token=3)
    d.start()
    yield d
    d.stop()


def stream(d: Daemon, path: str, **headers: str) -> requests.Response:
    resp = HTTP.get(
        d.url + path, headers={**d.headers(), **headers}, stream=True, timeout=(5, READ_S)
    )
    return resp


def sse_events(resp: requests.Response, limit: int | None = None) -> list[dict[str, Any]]:
    """The stream's events as ``{"id", "event", "data"}`` until it ends (or ``limit``)."""
    found: list[dict[str, Any]] = []
    for e in SSEClient(resp.iter_content(chunk_size=None)).events():
        found.append({"id": int(e.id), "event": e.event, "data": json.loads(e.data)})
        if limit is not None and len(found) >= limit:
            break
    return found


def test_a_stream_resumed_with_last_event_id_loses_nothing(daemon: Daemon) -> None:
    """Disconnected after three events, the client resumes from the third: together the two
    connections hold the job's whole stream, each event once, in order, to JobCompleted,
    exactly as a replay of the finished job gives it, but for its StageProgress events
    (transient: pruned when the job ends, their ids left as gaps)."""
    daemon.client().submit(make_job("ev-resume"))
    with stream(daemon, "/v1/jobs/ev-resume/events") as first:
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/event-stream")
        head = sse_events(first, limit=3)
    with stream(daemon, "/v1/jobs/ev-resume/events", **{"Last-Event-ID": "3"}) as second:
        rest = sse_events(second)  # ends by itself after JobCompleted
    got = head + rest
    assert [e["id"] for e in got] == list(range(1, len(got) + 1))
    assert got[0]["event"] == "JobAccepted" and got[-1]["event"] == "JobCompleted"
    assert all(e["data"]["type"] == e["event"] and e["data"]["job_id"] == "ev-resume" for e in got)
    assert got[-1]["data"]["result"]["status"] == "succeeded"
    assert sum(e["event"] == "StageSucceeded" for e in got) == 4
    with stream(daemon, "/v1/jobs/ev-resume/events") as replay:
        assert sse_events(replay) == [e for e in got if e["event"] != "StageProgress"]


def test_a_finished_jobs_stream_replays_and_closes_then_answers_204(daemon: Daemon) -> None:
    """A finished job: the stream replays every event and ends by itself; asked again from
    its last id, 204 (EventSource stops reconnecting); ``?after=`` works like the header."""
    client = daemon.client()
    client.submit(make_job("ev-done"))
    assert client.result("ev-done", timeout=60).status == "succeeded"
    with stream(daemon, "/v1/jobs/ev-done/events") as resp:
        events = sse_events(resp)
    assert events[-1]["event"] == "JobCompleted"
    last = events[-1]["id"]
    with stream(daemon, f"/v1/jobs/ev-done/events?after={last - 1}") as resp:
        assert [e["id"] for e in sse_events(resp)] == [last]
    again = HTTP.get(
        f"{daemon.url}/v1/jobs/ev-done/events",
        headers={**daemon.headers(), "Last-Event-ID": str(last)},
        timeout=5,
    )
    assert again.status_code == 204
    missing = HTTP.get(f"{daemon.url}/v1/jobs/nope/events", headers=daemon.headers(), timeout=5)
    assert missing.status_code == 404
    bad = HTTP.get(f"{daemon.url}/v1/events?after=x", headers=daemon.headers(), timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "after"


def test_the_all_jobs_stream_carries_every_jobs_events_in_global_order(daemon: Daemon) -> None:
    """``/v1/events`` (from now on): two jobs' events, ids increasing, each job's own
    events in their order, until both ended."""
    client = daemon.client()
    with stream(daemon, "/v1/events") as resp:
        client.submit(make_job("ev-all-1"))
        client.submit(make_job("ev-all-2"))
        got: list[dict[str, Any]] = []
        ended: set[str] = set()
        for e in SSEClient(resp.iter_content(chunk_size=None)).events():
            got.append({"id": int(e.id), "data": json.loads(e.data)})
            if e.event == "JobCompleted":
                ended.add(got[-1]["data"]["job_id"])
            if ended >= {"ev-all-1", "ev-all-2"}:
                break
    ids = [e["id"] for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for job in ("ev-all-1", "ev-all-2"):
        types = [e["data"]["type"] for e in got if e["data"]["job_id"] == job]
        assert types[0] == "JobAccepted" and types[-1] == "JobCompleted"


def test_streams_per_token_are_capped_with_429(daemon: Daemon) -> None:
    """Three open streams (the daemon's cap) hold the token's quota: a fourth is 429 with
    Retry-After; once one closes, a new one opens."""
    opened = [stream(daemon, "/v1/events") for _ in range(3)]
    try:
        assert [r.status_code for r in opened] == [200, 200, 200]
        refused = stream(daemon, "/v1/events")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["Retry-After"].isdigit()
        opened.pop().close()

        def reopened() -> bool:
            r = stream(daemon, "/v1/events")
            r.close()
            return r.status_code == 200

        assert wait_for(reopened, 10, 0.1), "a closed stream still counted"
    finally:
        for r in opened:
            r.close()


def test_a_stream_token_opens_its_jobs_stream_only(daemon: Daemon) -> None:
    """``POST /v1/jobs/{id}/stream-token`` (bearer) gives a token that opens that job's
    stream without the bearer token; not another job's, not /v1/events, not the API; a
    token altered by one character is refused; the token is not the API token."""
    client = daemon.client()
    client.submit(make_job("ev-tok-a"))
    client.submit(make_job("ev-tok-b"))
    given = HTTP.post(f"{daemon.url}/v1/jobs/ev-tok-a/stream-token", headers=daemon.headers())
    assert given.status_code == 200
    body = given.json()
    token = body["token"]
    assert daemon.token not in token and body["expires_in_s"] == 300
    with HTTP.get(daemon.url + body["url"], stream=True, timeout=(5, READ_S)) as resp:
        assert resp.status_code == 200
        assert sse_events(resp)[-1]["event"] == "JobCompleted"
    for path in (
        f"/v1/jobs/ev-tok-b/events?access_token={token}",
        f"/v1/events?access_token={token}",
        f"/v1/jobs/ev-tok-a?access_token={token}",
        f"/v1/jobs/ev-tok-a/events?access_token={token[:-1]}{'A' if token[-1] != 'A' else 'B'}",
    ):
        refused = HTTP.get(daemon.url + path, timeout=5)
        assert refused.status_code == 401, path
        assert token not in refused.text
    assert HTTP.post(f"{daemon.url}/v1/jobs/ev-tok-a/stream-token").status_code == 401
    unknown = HTTP.post(f"{daemon.url}/v1/jobs/nope/stream-token", headers=daemon.headers())
    assert unknown.status_code == 404


def test_submit_wait_follows_the_stream(daemon: Daemon, tmp_path: Path) -> None:
    """``briefd submit --wait`` prints the outcome from the stream's JobCompleted (the
    daemon's log shows no result long-poll for it)."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("ev-cli")), encoding="utf-8")
    env = {**daemon.env}
    out = subprocess.run(
        [sys.executable, "-m", "briefd", "submit", str(job), "--wait", "--url", daemon.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "ev-cli"
    assert "ev-cli: succeeded" in out.stdout


def test_client_events_reconnect_across_a_daemon_restart(sim: SimServer, tmp_path: Path) -> None:
    """``Client().events`` follows a job while its daemon stops and starts again: the events
    it yields are the job's, each once, numbered without a gap, through the resumed run to
    JobCompleted."""
    d = Daemon(tmp_path, sim.base_url, grace_s=0)
    d.start()
    try:
        client = d.client()
        client.submit(make_job("ev-restart"))
        follower = d.client()
        seen: list[tuple[int | None, str]] = []
        events = follower.events("ev-restart", timeout=120)
        for event in events:
            seen.append((follower.last_event_id, event.type))
            if event.type == "StageStarted":
                break
        d.stop()
        d.start()
        for event in events:
            seen.append((follower.last_event_id, event.type))
        ids = [i for i, _ in seen]
        assert ids == list(range(1, len(seen) + 1))
        types = [t for _, t in seen]
        assert types[-1] == "JobCompleted" and types.count("JobCompleted") == 1
        assert types.count("JobStarted") == 2, types  # the run resumed after the restart
    finally:
        d.stop()
