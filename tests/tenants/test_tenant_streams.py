"""Event streams and webhooks of tenants through a real ``briefd serve`` (SQLite).

Two tenants with the same job id each stream their own job only, shown by its bare id;
another tenant's job stream is 404; ``/v1/events`` shows a key its tenant's events only
(the token file, an admin, all); the cap on streams counts per API key (stream tokens
against the key that asked for them); a stream token of one tenant cannot open another
tenant's job; webhooks and their listing follow the job, so its tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from daemon_helpers import HTTP, Daemon, journal_rows, make_job, wait_for
from sseclient import SSEClient
from webhook_receiver import Receiver, new_secret

from briefd.sim.server import SimProfile, SimServer
from briefd.tenants.keys import key_id_of
from tenants.helpers import bearer, call, new_key

READ_S = 30.0
CAP = 2
PROGRESS = "StageProgress"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.02)) as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver(new_secret()) as r:
        yield r


@pytest.fixture(scope="module")
def daemon(
    sim: SimServer, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("tenant-streams"),
        sim.base_url,
        max_streams_per_token=CAP,
        webhook_secret=receiver.secret,
        webhook_allow_private="true",
    )
    for name in ("acme", "beta"):
        d.cli("tenant", "add", name)
    d.start()
    yield d
    d.stop()


def submit(d: Daemon, key: str, job: dict[str, Any]) -> None:
    r = call(d, key, "POST", "/v1/jobs", job)
    assert r.status_code == 202, r.text


def finished(d: Daemon, key: str, job_id: str) -> None:
    def done() -> bool:
        r = call(d, key, "GET", f"/v1/jobs/{job_id}/result?wait=5")
        return r.status_code == 200

    assert wait_for(done, 60), f"{job_id} did not end:\n{d.log()}"


def open_stream(d: Daemon, path: str, key: str | None, **headers: str) -> requests.Response:
    auth = bearer(key) if key is not None else {}
    return HTTP.get(d.url + path, headers={**auth, **headers}, stream=True, timeout=(5, READ_S))


def read(resp: requests.Response, until: str | None = None) -> list[dict[str, Any]]:
    """Events of an SSE response, to its end or past ``until``'s JobCompleted (its job_id
    as the stream shows it)."""
    found = []
    for e in SSEClient(resp.iter_content(chunk_size=None)).events():
        data = json.loads(e.data)
        found.append({"id": int(e.id), "event": e.event, "data": data})
        if until is not None and e.event == "JobCompleted" and data["job_id"] == until:
            break
    return found


def stored(d: Daemon, key: str) -> list[tuple[int, str, float]]:
    """``(seq, type, ts)`` of the journal's event rows of internal key ``key``."""
    rows = journal_rows(d.data_dir, f"SELECT seq, type, ts FROM events WHERE job_id='{key}'")
    return sorted((int(s), str(t), float(ts)) for s, t, ts in rows if t != PROGRESS)


def seen(events: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    """``(id, type, ts)`` of streamed events, as :func:`stored` (the journal drops a job's
    StageProgress rows when it ends: those streamed live are left out)."""
    return [(e["id"], e["event"], e["data"]["ts"]) for e in events if e["event"] != PROGRESS]


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(e["event"], e["data"]["ts"]) for e in events if e["event"] != PROGRESS]


def test_two_tenants_with_the_same_id_each_stream_their_own(daemon: Daemon) -> None:
    """acme and beta both run ``same-q3``: each one's stream is its own job's rows (as the
    journal holds them under ``acme.same-q3`` / ``beta.same-q3``), ``job_id`` bare, as
    ``GET /v1/jobs/same-q3`` shows it; the token file (admin) reaches each by full key."""
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    for key in (a, b):
        submit(daemon, key, make_job("same-q3"))
    for key, tenant in ((a, "acme"), (b, "beta")):
        with open_stream(daemon, "/v1/jobs/same-q3/events", key) as resp:
            assert resp.status_code == 200, resp.text
            got = read(resp)
        assert got[-1]["event"] == "JobCompleted"
        assert {e["data"]["job_id"] for e in got} == {"same-q3"}
        assert got[-1]["data"]["result"]["job_id"] == "same-q3"  # as GET .../result shows it
        assert seen(got) == stored(daemon, f"{tenant}.same-q3")
        assert call(daemon, key, "GET", "/v1/jobs/same-q3").json()["job_id"] == "same-q3"
        with open_stream(daemon, f"/v1/jobs/{tenant}.same-q3/events", daemon.token) as resp:
            admin = read(resp)
        assert {e["data"]["job_id"] for e in admin} == {f"{tenant}.same-q3"}
        assert seen(admin) == seen(got)
    assert stored(daemon, "acme.same-q3") != stored(daemon, "beta.same-q3")


def test_another_tenants_job_stream_is_404_and_scopes_hold(daemon: Daemon) -> None:
    """beta's job, under its bare id or its full key, is no job for acme's key: 404 to
    stream it or to ask a stream token for it. Streaming needs ``read`` (a submit-only key:
    403); a read-only key may ask a stream token."""
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    submit(daemon, b, make_job("only-beta"))
    for path in ("/v1/jobs/only-beta/events", "/v1/jobs/beta.only-beta/events"):
        r = call(daemon, a, "GET", path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert call(daemon, a, "POST", "/v1/jobs/only-beta/stream-token").status_code == 404
    submit_only = new_key(daemon, "beta", "submit")
    assert call(daemon, submit_only, "GET", "/v1/jobs/only-beta/events").status_code == 403
    read_only = new_key(daemon, "beta", "read")
    given = call(daemon, read_only, "POST", "/v1/jobs/only-beta/stream-token")
    assert given.status_code == 200, given.text
    assert given.json()["url"].startswith("/v1/jobs/only-beta/events?access_token=")


def test_all_events_show_a_key_its_tenants_only(daemon: Daemon) -> None:
    """Opened before beta's job and acme's job run (beta's first, to its end): acme's
    ``/v1/events`` carries acme's job only, by its bare id; beta's, beta's; the token
    file's, both, by full key. A replay from 0 is filtered the same way."""
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    streams = {
        who: open_stream(daemon, "/v1/events", key)
        for who, key in (("acme", a), ("beta", b), ("admin", daemon.token))
    }
    try:
        assert {r.status_code for r in streams.values()} == {200}
        submit(daemon, b, make_job("all-b"))
        finished(daemon, b, "all-b")
        submit(daemon, a, make_job("all-a"))
        got_a = read(streams["acme"], until="all-a")
        got_b = read(streams["beta"], until="all-b")
        got_admin = read(streams["admin"], until="acme.all-a")
    finally:
        for r in streams.values():
            r.close()
    assert {e["data"]["job_id"] for e in got_a} == {"all-a"}
    assert kinds(got_a) == [(t, ts) for _, t, ts in stored(daemon, "acme.all-a")]
    assert {e["data"]["job_id"] for e in got_b} == {"all-b"}
    assert kinds(got_b) == [(t, ts) for _, t, ts in stored(daemon, "beta.all-b")]
    assert [e["id"] for e in got_a] == sorted({e["id"] for e in got_a})  # the global order
    assert {e["data"]["job_id"] for e in got_admin} == {"beta.all-b", "acme.all-a"}
    with open_stream(daemon, "/v1/events", a, **{"Last-Event-ID": "0"}) as replay:
        rows = read(replay, until="all-a")
    assert all("." not in e["data"]["job_id"] for e in rows)
    assert "all-b" not in {e["data"]["job_id"] for e in rows}


def test_the_stream_cap_counts_per_key(daemon: Daemon) -> None:
    """Two streams (the cap) with acme's first key: a third is 429, and so is one opened
    with a stream token that key asked for; acme's second key and the token file still
    open theirs; once one closes, the first key opens again."""
    a1, a2 = new_key(daemon, "acme"), new_key(daemon, "acme")
    submit(daemon, a1, make_job("cap-a"))
    finished(daemon, a1, "cap-a")
    url = call(daemon, a1, "POST", "/v1/jobs/cap-a/stream-token").json()["url"]
    opened = [open_stream(daemon, "/v1/events", a1) for _ in range(CAP)]
    try:
        assert [r.status_code for r in opened] == [200] * CAP
        refused = call(daemon, a1, "GET", "/v1/events")
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert HTTP.get(daemon.url + url, timeout=10).status_code == 429
        for other in (a2, daemon.token):
            with open_stream(daemon, "/v1/events", other) as resp:
                assert resp.status_code == 200
        opened.pop().close()

        def reopened() -> bool:
            with open_stream(daemon, "/v1/events", a1) as r:
                return r.status_code == 200

        assert wait_for(reopened, 10, 0.1), "a closed stream still counted"
    finally:
        for r in opened:
            r.close()


def test_a_stream_token_cannot_open_another_tenants_job(daemon: Daemon) -> None:
    """acme's token for ``tok-q3`` opens acme's ``tok-q3`` (its rows), not beta's job of the
    same id under any URL; altered to name beta it is no token; the token file's token for
    beta's job, by full key, opens beta's."""
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    for key in (a, b):
        submit(daemon, key, make_job("tok-q3"))
        finished(daemon, key, "tok-q3")
    grant = call(daemon, a, "POST", "/v1/jobs/tok-q3/stream-token").json()
    token = grant["token"]
    with open_stream(daemon, grant["url"], None) as resp:
        assert resp.status_code == 200
        got = read(resp)
    assert seen(got) == stored(daemon, "acme.tok-q3")
    assert {e["data"]["job_id"] for e in got} == {"tok-q3"}
    forged = token.replace(".acme.", ".beta.")
    assert forged != token
    for path in (
        f"/v1/jobs/beta.tok-q3/events?access_token={token}",
        f"/v1/jobs/tok-q3/events?access_token={forged}",
    ):
        r = HTTP.get(daemon.url + path, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["field"] == "access_token" and token not in r.text
    admin = HTTP.post(
        f"{daemon.url}/v1/jobs/beta.tok-q3/stream-token", headers=daemon.headers(), timeout=10
    ).json()
    assert admin["url"].startswith("/v1/jobs/beta.tok-q3/events?")
    with open_stream(daemon, admin["url"], None) as resp:
        assert resp.status_code == 200
        assert seen(read(resp)) == stored(daemon, "beta.tok-q3")


def test_webhooks_follow_the_job_and_its_tenant(daemon: Daemon, receiver: Receiver) -> None:
    """acme's ``hook-q3`` asks for a webhook, beta's ``hook-q3`` does not: the receiver
    hears of acme's job only (its payload names the internal key), acme's
    ``GET /v1/jobs/hook-q3`` lists the delivery, beta's lists none."""
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    job = make_job("hook-q3")
    job["webhook"] = {"url": receiver.url}
    submit(daemon, a, job)
    submit(daemon, b, make_job("hook-q3"))
    for key in (a, b):
        finished(daemon, key, "hook-q3")
    got = receiver.wait(1, 30)
    assert [r.body["data"]["job_id"] for r in got] == ["acme.hook-q3"]
    assert all(r.verified for r in got)

    def listed() -> Any:
        hooks = call(daemon, a, "GET", "/v1/jobs/hook-q3").json()["webhooks"]
        return hooks if hooks and hooks[0]["state"] == "delivered" else None

    hooks = wait_for(listed, 20)
    assert hooks and [h["id"] for h in hooks] == [r.id for r in got]
    assert call(daemon, b, "GET", "/v1/jobs/hook-q3").json()["webhooks"] == []


def test_a_revoked_keys_stream_tokens_open_nothing(daemon: Daemon) -> None:
    """A stream token asked by a key opens its job's stream while the key is live; once the
    key is revoked, the same token is 401 (naming the revocation, not repeating the token)."""
    key = new_key(daemon, "acme")
    submit(daemon, key, make_job("rev-q3"))
    finished(daemon, key, "rev-q3")
    grant = call(daemon, key, "POST", "/v1/jobs/rev-q3/stream-token").json()
    with open_stream(daemon, grant["url"], None) as resp:
        assert resp.status_code == 200
    key_id = key_id_of(key)
    assert key_id is not None
    daemon.cli("key", "revoke", key_id)
    refused = HTTP.get(daemon.url + grant["url"], timeout=10)
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["error"]["message"] and grant["token"] not in refused.text
