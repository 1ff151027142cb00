"""The event streams' bounds, in process: a real SQLite journal and the real HTTP server on
loopback, with small buffers so that a slow client is slow within a test.

A client that stops reading is dropped (its connection aborted) while another client of
the same job gets every event in order; stream tokens expire and are scoped to one job.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from daemon_helpers import HTTP, wait_for
from sseclient import SSEClient

from briefd.config import load_pipeline
from briefd.daemon.http_api import ApiServer, bind_loopback
from briefd.daemon.http_events import EventStreams
from briefd.daemon.stream_token import StreamTokens
from briefd.messages import ErrorCode, JobSpec, JobState, StageSucceeded
from briefd.store.sqlite import Journal

TOKEN = "test-token"
STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


@contextlib.contextmanager
def _serving(tmp_path: Path, **streams_kw: Any) -> Iterator[tuple[Journal, EventStreams, str]]:
    """A journal, its event streams (``streams_kw``: their bounds) and the API serving them."""
    journal = Journal(tmp_path / "j.sqlite3", load_pipeline(None))
    streams = EventStreams(journal.event_log, journal.get, StreamTokens(TOKEN), **streams_kw)
    server = ApiServer(
        cast(Any, None),
        bind_loopback("127.0.0.1:0"),
        token=TOKEN,
        max_body=1 << 20,
        streams=streams,
    )
    server.start()
    try:
        yield journal, streams, server.url
    finally:
        server.stop()
        journal.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Journal, EventStreams, str]]:
    with _serving(tmp_path, buffer=16, send_timeout_s=1.0) as parts:
        yield parts


def _job(job_id: str) -> JobSpec:
    return JobSpec(job_id=job_id, prompts={s: "x" for s in STAGES})


def test_a_slow_client_is_dropped_and_the_others_get_everything(
    served: tuple[Journal, EventStreams, str],
) -> None:
    """One client reads nothing (a tiny receive buffer); another reads the same job's stream.
    Batches of large events go in, each once the reader has the last: the silent client is
    dropped (its connection aborted, its stream no longer held) and the reader gets every
    event, in order, to JobCompleted."""
    journal, streams, url = served
    journal.add_job(_job("slow-1"))
    port = int(url.rsplit(":", 1)[1])
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.connect(("127.0.0.1", port))
    silent.sendall(
        f"GET /v1/jobs/slow-1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    assert wait_for(lambda: streams.hub.streams == 1, 10), "the silent client's stream"
    received: list[tuple[int, str]] = []
    reader_done = threading.Event()

    def read() -> None:
        with HTTP.get(
            f"{url}/v1/jobs/slow-1/events",
            headers={"Authorization": f"Bearer {TOKEN}"},
            stream=True,
            timeout=(5, 30),
        ) as resp:
            for e in SSEClient(resp.iter_content(chunk_size=None)).events():
                received.append((int(e.id), e.event))
        reader_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert wait_for(lambda: streams.hub.streams == 2, 10), "the reader's stream"
    document = "y" * 64_000
    sent = 0
    for _ in range(60):
        batch = [
            StageSucceeded(
                job_id="slow-1", stage="PLAYS_MD", document=document, elapsed_ms=1, attempts=1
            )
            for _ in range(8)
        ]
        journal.event_log.append(batch)
        sent += len(batch)
        assert wait_for(lambda n=sent: len(received) >= n, 10), f"reader stalled: {len(received)}"
        if streams.hub.streams == 1:
            break
    assert wait_for(lambda: streams.hub.streams == 1, 10), "the silent client was not dropped"
    journal.close_job("slow-1", JobState.CANCELLED, ErrorCode.CANCELLED, "done")
    assert reader_done.wait(30), "the reader's stream did not end"
    assert [i for i, _ in received] == list(range(1, len(received) + 1))
    assert received[-1][1] == "JobCompleted" and len(received) == sent + 1
    silent.setblocking(False)
    got = b""
    with pytest.raises((ConnectionResetError, BlockingIOError, AssertionError)):
        while chunk := silent.recv(1 << 20):
            got += chunk
        raise AssertionError("closed")  # an orderly end is a drop too
    assert got.count(b"event: StageSucceeded") < sent
    silent.close()


def test_a_quiet_stream_sends_heartbeat_comments(tmp_path: Path) -> None:
    """A stream with nothing to say sends a comment line every ``heartbeat_s`` (proxies keep
    it open; clients ignore it), and the events that come later still arrive."""
    with _serving(tmp_path, heartbeat_s=0.2) as (journal, _, url):
        journal.add_job(_job("hb-1"))
        with HTTP.get(
            f"{url}/v1/jobs/hb-1/events",
            headers={"Authorization": f"Bearer {TOKEN}"},
            stream=True,
            timeout=(5, 10),
        ) as resp:
            chunks = resp.iter_content(chunk_size=None)
            first = next(chunks)
            assert first.startswith(b": ping"), first
            journal.close_job("hb-1", JobState.CANCELLED, ErrorCode.CANCELLED, "done")
            rest = b"".join(chunks)  # the stream ends after JobCompleted
        assert b"event: JobCompleted" in rest


def test_a_stream_token_is_scoped_to_its_job_and_expires() -> None:
    """A token opens its job's stream until its expiry, not another job's; one signed with
    another API token's key, or altered, is refused; the reason never repeats it."""
    now = [1000.0]
    tokens = StreamTokens(TOKEN, ttl_s=300, clock=lambda: now[0])
    token, expires = tokens.issue("job-a")
    assert expires == 1300 and TOKEN not in token
    assert tokens.check(token, "job-a") is None
    assert tokens.check(token, "job-b") == "a stream token for another job"
    assert StreamTokens("other", clock=lambda: now[0]).check(token, "job-a") is not None
    forged = token.replace(".1300.", ".9999.")
    assert tokens.check(forged, "job-a") == "not a stream token of this daemon"
    assert tokens.check("garbage", "job-a") == "not a stream token"
    now[0] = 1299.0
    assert tokens.check(token, "job-a") is None
    now[0] = 1300.0
    why = tokens.check(token, "job-a")
    assert why is not None and "expired" in why and token not in why


def test_an_expired_stream_token_is_refused_by_the_server(
    served: tuple[Journal, EventStreams, str],
) -> None:
    """The server checks the expiry: a token issued with a clock five minutes behind is
    already expired (401, naming ``access_token``)."""
    journal, _, url = served
    journal.add_job(_job("tok-1"))
    old, _ = StreamTokens(TOKEN, clock=lambda: 0.0).issue("tok-1")
    resp = HTTP.get(f"{url}/v1/jobs/tok-1/events?access_token={old}", timeout=5)
    assert resp.status_code == 401
    assert resp.json()["error"]["field"] == "access_token"
    fresh = HTTP.post(
        f"{url}/v1/jobs/tok-1/stream-token", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    with HTTP.get(url + fresh["url"], stream=True, timeout=(5, 5)) as ok:
        assert ok.status_code == 200


def test_events_are_stored_with_their_write_and_stop_at_the_end(tmp_path: Path) -> None:
    """A stage event staged with its write is committed with it; a write refused by nothing
    at all (the job ended) keeps nothing after JobCompleted; progress rows go at the end."""
    from briefd.messages import StageProgress, StageStarted

    journal = Journal(tmp_path / "j.sqlite3", load_pipeline(None))
    try:
        journal.add_job(_job("st-1"))
        started = StageStarted(job_id="st-1", stage="PLAYS_MD", attempt=1)
        with journal.event_log.staged([started]) as staged:
            journal.stage_started("st-1", "PLAYS_MD", 1)
        assert staged.flushed
        journal.event_log.append(
            [
                StageProgress(
                    job_id="st-1", stage="PLAYS_MD", attempt=1, completion_tokens=5, fraction=0.1
                )
            ]
        )
        journal.close_job("st-1", JobState.CANCELLED, ErrorCode.CANCELLED, "stop")
        journal.event_log.append([started])  # a straggler after the end: not stored
        rows = journal.event_log.read("st-1", 0)
        assert [r.type for r in rows] == ["StageStarted", "JobCompleted"]
        assert [r.seq for r in rows] == [1, 3]  # the progress row (seq 2) went with the end
        assert json.loads(rows[0].data) == json.loads(started.model_dump_json())
    finally:
        journal.close()
