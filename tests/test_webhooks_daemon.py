"""Webhooks from a real ``briefd serve``: signed deliveries a Standard Webhooks receiver
verifies, refusals at submission, retries while the receiver is down, and kill -9.

Each test runs the daemon as a subprocess against the in-process simulator, and a
:class:`webhook_receiver.Receiver` (a real HTTP server on 127.0.0.1). Waits are on
conditions with generous deadlines; retries use short backoffs, never sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import HTTP, Daemon, free_port, journal_rows, make_job, wait_for
from webhook_receiver import Receiver, new_secret

from briefd.messages import JobStatus
from briefd.sim.server import SimServer

FAST_RETRY = {"webhook_retry_initial_s": 0.2, "webhook_retry_max_s": 1.0}


def webhook_daemon(tmp: Path, sim: SimServer, secret: str, **settings: Any) -> Daemon:
    return Daemon(
        tmp, sim.base_url, webhook_secret=secret, webhook_allow_private="true", **settings
    )


def with_hook(job_id: str, url: str, events: list[str] | None = None) -> dict[str, Any]:
    job = make_job(job_id)
    job["webhook"] = {"url": url, **({"events": events} if events else {})}
    return job


def outbox(d: Daemon) -> list[tuple[Any, ...]]:
    return journal_rows(
        d.data_dir, "SELECT id, job_id, event, state, attempts FROM webhook_outbox ORDER BY id"
    )


def test_deliveries_are_signed_listed_and_counted(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A job asking for StageSucceeded and JobCompleted gets five deliveries, each verified
    by the Standard Webhooks library, with the event's whole JSON as ``data``;
    GET /v1/jobs/{id} lists them delivered (the URL's query hidden), /metrics counts them."""
    secret = new_secret()
    with Receiver(secret) as receiver:
        d = webhook_daemon(tmp_path, sim, secret)
        daemons.append(d.start())
        url = receiver.url + "?token=hunter2hunter2"
        with d.client() as client:
            client.submit(with_hook("wh-1", url, ["StageSucceeded", "JobCompleted"]))
            assert client.result("wh-1", timeout=30).status is JobStatus.SUCCEEDED
            got = receiver.wait(5, 20)
            assert len(got) == 5, got
            assert all(r.verified for r in got), got
            assert len({r.id for r in got}) == 5
            types = sorted(r.body["type"] for r in got)
            assert types == ["JobCompleted", *["StageSucceeded"] * 4]
            done = next(r for r in got if r.body["type"] == "JobCompleted")
            assert done.body["data"]["result"]["status"] == "succeeded"
            assert done.body["data"]["result"]["documents"]["BRIEFING_MD"]
            assert done.path.endswith("?token=hunter2hunter2")

            def delivered() -> list[Any]:
                shown = client.status("wh-1").webhooks
                return shown if {w.state for w in shown} == {"delivered"} else []

            listed = wait_for(delivered, 10)
            assert len(listed) == 5, client.status("wh-1").webhooks
            assert {w.id for w in listed} == {r.id for r in got}
            assert all(w.last_status == 204 and w.attempts == 1 for w in listed)
            assert all(w.url.endswith("/hooks/briefd?token=***") for w in listed)
        metrics = HTTP.get(f"{d.url}/metrics", headers=d.headers(), timeout=5).text
        assert 'briefd_webhook_deliveries{state="delivered"} 5.0' in metrics
        assert 'briefd_webhook_attempts_total{outcome="delivered"} 5.0' in metrics
        assert "hunter2hunter2" not in d.log()
        assert secret.removeprefix("whsec_") not in d.log()


def test_private_and_bad_webhooks_are_refused_at_submission(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Without BRIEFD_WEBHOOK_ALLOW_PRIVATE a loopback receiver is refused (400, field
    webhook.url); so are the metadata address, the daemon itself, an unknown event, and
    a webhook on a daemon with no secret. Nothing is stored."""
    d = Daemon(tmp_path, sim.base_url, webhook_secret=new_secret())
    daemons.append(d.start())
    cases = [
        (with_hook("p-1", "http://127.0.0.1:9/x"), "webhook.url", "loopback"),
        (with_hook("p-2", "http://169.254.169.254/latest"), "webhook.url", "metadata"),
        (with_hook("p-3", f"{d.url}/v1/jobs"), "webhook.url", "own API"),
        (with_hook("p-4", "gopher://example.com/"), "webhook.url", "only http"),
        (with_hook("p-5", "http://8.8.8.8/", ["Nope"]), "webhook.events", "not a briefd event"),
        (with_hook("p-6", "http://8.8.8.8/", ["TokenGranted"]), "webhook.events", "not sent"),
    ]
    for job, field, why in cases:
        answer = HTTP.post(f"{d.url}/v1/jobs", json=job, headers=d.headers(), timeout=10)
        assert answer.status_code == 400, (job["job_id"], answer.text)
        err = answer.json()["error"]
        assert err["field"] == field and why in err["message"], err
        assert HTTP.get(f"{d.url}/v1/jobs/{job['job_id']}", headers=d.headers()).status_code == 404
    d.stop()

    bare = Daemon(tmp_path / "bare", sim.base_url)
    (tmp_path / "bare").mkdir()
    daemons.append(bare.start())
    answer = HTTP.post(
        f"{bare.url}/v1/jobs",
        json=with_hook("p-7", "http://8.8.8.8/"),
        headers=bare.headers(),
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "webhook"
    assert "BRIEFD_WEBHOOK_SECRET" in answer.json()["error"]["message"]


def test_a_default_url_without_a_secret_stops_the_start(sim: SimServer, tmp_path: Path) -> None:
    """BRIEFD_WEBHOOK_URL with no BRIEFD_WEBHOOK_SECRET: exit 2 with one line naming both."""
    d = Daemon(tmp_path, sim.base_url, webhook_url="https://hooks.example.com/x")
    d.proc = d.spawn(d.command())
    assert d.wait_exit(20) == 2
    lines = [line for line in d.log().splitlines() if "BRIEFD_WEBHOOK_SECRET" in line]
    assert lines and "BRIEFD_WEBHOOK_URL" in lines[0], d.log()


def test_a_receiver_down_then_up_gets_every_delivery_with_the_same_id(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """While nothing listens, attempts fail and are retried with a growing delay; once the
    receiver is up each delivery arrives, verified, under the id of its first attempt.
    The daemon-wide BRIEFD_WEBHOOK_URL serves jobs without a webhook (JobCompleted only)."""
    secret = new_secret()
    receiver = Receiver(secret, port=free_port())
    d = webhook_daemon(tmp_path, sim, secret, webhook_url=receiver.url, **FAST_RETRY)
    daemons.append(d.start())
    with d.client() as client:
        for i in range(3):
            client.submit(make_job(f"down-{i}"))
        for i in range(3):
            assert client.result(f"down-{i}", timeout=30).status is JobStatus.SUCCEEDED
        assert wait_for(lambda: all(r[4] >= 3 for r in outbox(d)) and len(outbox(d)) == 3, 30), (
            outbox(d)
        )
        ids = {r[0] for r in outbox(d)}
        retries = [e for e in d.events("WebhookAttempted") if e["outcome"] == "retry"]
        assert retries and all(e["status"] is None and e["error"] for e in retries)
        waits = sorted((e["delivery_id"], e["attempt"], e["retry_in_s"]) for e in retries)
        first = [w for i, a, w in waits if a == 1]
        assert all(0.1 <= w <= 0.2 for w in first), waits
        receiver.up()
        try:
            got = receiver.wait(3, 20)
            assert len(got) == 3 and all(r.verified for r in got)
            assert {r.id for r in got} == ids
            assert {r.body["data"]["job_id"] for r in got} == {f"down-{i}" for i in range(3)}
            assert {r.body["type"] for r in got} == {"JobCompleted"}
            listed = client.status("down-0").webhooks
            assert wait_for(lambda: client.status("down-0").webhooks[0].state == "delivered", 10)
            assert listed[0].attempts >= 3
        finally:
            receiver.down()


def test_410_gone_stops_the_retries(sim: SimServer, tmp_path: Path, daemons: list[Daemon]) -> None:
    """A receiver answering 410 Gone is not asked again: the delivery is failed at once."""
    secret = new_secret()
    with Receiver(secret, status=410) as receiver:
        d = webhook_daemon(tmp_path, sim, secret, webhook_url=receiver.url, **FAST_RETRY)
        daemons.append(d.start())
        with d.client() as client:
            client.submit(make_job("gone-1"))
            assert wait_for(
                lambda: [w.state for w in client.status("gone-1").webhooks] == ["failed"], 30
            )
            (shown,) = client.status("gone-1").webhooks
            assert shown.last_status == 410 and shown.attempts == 1
        assert len(receiver.received) == 1


def test_kill_9_with_pending_deliveries_loses_none(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """kill -9 while deliveries wait for a receiver that is down; after the restart and the
    receiver's return every one arrives, signed, under the id it had before the kill."""
    secret = new_secret()
    receiver = Receiver(secret, port=free_port())
    d = webhook_daemon(tmp_path, sim, secret, webhook_url=receiver.url, **FAST_RETRY)
    daemons.append(d.start())
    n = 6
    with d.client() as client:
        for i in range(n):
            client.submit(make_job(f"k9-{i}"))
        assert wait_for(lambda: len(outbox(d)) == n and all(r[4] >= 1 for r in outbox(d)), 60)
    before = {r[0]: r[1] for r in outbox(d)}
    d.kill()
    d.start()
    receiver.up()
    try:
        got = receiver.wait(n, 30)
        assert {r.id for r in got} == set(before), (got, before)
        assert all(r.verified for r in got)
        assert {r.id: r.body["data"]["job_id"] for r in got} == before
        assert wait_for(lambda: {r[3] for r in outbox(d)} == {"delivered"}, 10), outbox(d)
    finally:
        receiver.down()


@pytest.mark.parametrize("allowed", [False, True])
def test_the_default_url_is_checked_at_start(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon], allowed: bool
) -> None:
    """A loopback BRIEFD_WEBHOOK_URL stops the start (exit 2, one line) unless private
    networks are allowed."""
    settings: dict[str, Any] = {"webhook_url": "http://127.0.0.1:9/hooks"}
    if allowed:
        settings["webhook_allow_private"] = "true"
    d = Daemon(tmp_path, sim.base_url, webhook_secret=new_secret(), **settings)
    if allowed:
        daemons.append(d.start())
        return
    d.proc = d.spawn(d.command())
    assert d.wait_exit(20) == 2
    assert "BRIEFD_WEBHOOK_URL: http://127.0.0.1:9/hooks: 127.0.0.1 is a loopback" in d.log()
