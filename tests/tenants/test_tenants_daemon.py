"""Tenants through a real ``briefd serve`` (SQLite) and the ``briefd tenant|key`` commands.

Isolation (another tenant's job is 404, to read, cancel, list or guess), two tenants
with the same job id, scopes, a tenant's budget holding only its own jobs, its queue
cap refusing only it, revocation, and failed authentications logged without the key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, make_job, wait_for

from briefd.sim.server import SimProfile, SimServer
from tenants.helpers import call, new_key


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("tenants"), sim.base_url, max_concurrent=2, key_cache_s=1)
    for name in ("acme", "beta"):
        d.cli("tenant", "add", name)
    d.start()
    yield d
    d.stop()


def wait_done(d: Daemon, key: str, job_id: str) -> dict[str, Any]:
    def done() -> Any:
        r = call(d, key, "GET", f"/v1/jobs/{job_id}/result?wait=5")
        return r.json() if r.status_code == 200 else None

    found = wait_for(done, 60)
    assert found, f"{job_id} did not end:\n{d.log()}"
    return dict(found)


def test_two_tenants_submit_the_same_id_and_see_only_their_own(daemon: Daemon) -> None:
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    job_a, job_b = make_job("acme-q3"), make_job("acme-q3")
    job_b["prompts"] = {s: f"beta's {p}" for s, p in job_b["prompts"].items()}
    for key, job in ((a, job_a), (b, job_b)):
        r = call(daemon, key, "POST", "/v1/jobs", job)
        assert r.status_code == 202, r.text
        assert r.json()["job_id"] == "acme-q3" and r.json()["created"] is True
    res_a, res_b = wait_done(daemon, a, "acme-q3"), wait_done(daemon, b, "acme-q3")
    assert res_a["job_id"] == res_b["job_id"] == "acme-q3"
    assert res_a["status"] == res_b["status"] == "succeeded"
    assert res_a["documents"] != res_b["documents"], "each tenant got its own job's documents"
    info = call(daemon, b, "GET", "/v1/jobs/acme-q3").json()
    assert (info["job_id"], info["tenant"]) == ("acme-q3", "beta")
    # Stored apart: the output folders and the event log carry the internal key and tenant.
    jobs = daemon.data_dir / "jobs"
    assert (jobs / "acme.acme-q3").is_dir() and (jobs / "beta.acme-q3").is_dir()
    accepted = {(e["job_id"], e["tenant"]) for e in daemon.events("JobAccepted")}
    assert {("acme.acme-q3", "acme"), ("beta.acme-q3", "beta")} <= accepted
    completed = {(e["job_id"], e.get("tenant")) for e in daemon.events("JobCompleted")}
    assert ("beta.acme-q3", "beta") in completed


def test_another_tenants_job_is_not_found_to_read_cancel_list_or_guess(daemon: Daemon) -> None:
    a, b = new_key(daemon, "acme"), new_key(daemon, "beta")
    assert call(daemon, a, "POST", "/v1/jobs", make_job("only-acme")).status_code == 202
    for method, path in (
        ("GET", "/v1/jobs/only-acme"),
        ("GET", "/v1/jobs/only-acme/result"),
        ("DELETE", "/v1/jobs/only-acme"),
        ("GET", "/v1/jobs/acme.only-acme"),  # its internal key: not for a tenant's key
        ("DELETE", "/v1/jobs/acme.only-acme"),
    ):
        r = call(daemon, b, method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    listed = [j["job_id"] for j in call(daemon, b, "GET", "/v1/jobs").json()["jobs"]]
    assert "only-acme" not in listed and "acme.only-acme" not in listed
    assert "only-acme" in [j["job_id"] for j in call(daemon, a, "GET", "/v1/jobs").json()["jobs"]]
    # A dotted id or another tenant named in the body is refused, not stored elsewhere.
    r = call(daemon, b, "POST", "/v1/jobs", make_job("acme.sneaky"))
    assert r.status_code == 400, r.text
    r = call(daemon, b, "POST", "/v1/jobs", {**make_job("x1"), "tenant": "acme"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "tenant"
    # The token file is the default tenant's admin: it sees every tenant's jobs, by full key.
    admin = daemon.token
    every = {
        (j["job_id"], j["tenant"]) for j in call(daemon, admin, "GET", "/v1/jobs").json()["jobs"]
    }
    assert ("acme.only-acme", "acme") in every
    assert call(daemon, admin, "GET", "/v1/jobs/acme.only-acme").json()["tenant"] == "acme"
    assert call(daemon, admin, "GET", "/v1/jobs/only-acme").status_code == 404, "bare: default's"
    assert call(daemon, a, "DELETE", "/v1/jobs/only-acme").status_code == 200


def test_scopes_are_enforced_per_route(daemon: Daemon) -> None:
    reader = new_key(daemon, "acme", "read")
    r = call(daemon, reader, "POST", "/v1/jobs", make_job("by-reader"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert call(daemon, reader, "GET", "/v1/jobs").status_code == 200
    assert call(daemon, reader, "DELETE", "/v1/jobs/anything").status_code == 403
    assert call(daemon, reader, "GET", "/metrics").status_code == 403
    admin = new_key(daemon, "beta", "admin")
    assert call(daemon, admin, "GET", "/metrics").status_code == 200


def test_a_revoked_key_is_refused_within_five_seconds(daemon: Daemon) -> None:
    key = new_key(daemon, "acme", "read")
    assert call(daemon, key, "GET", "/v1/jobs").status_code == 200
    key_id = key.split("_")[1]
    listed = daemon.cli("key", "list")
    assert key_id in listed and key not in listed
    daemon.cli("key", "revoke", key_id)
    refused = wait_for(lambda: call(daemon, key, "GET", "/v1/jobs").status_code == 401, 5.0)
    assert refused, "a revoked key must be refused within 5 s"
    assert key not in daemon.log(), "the key is never logged"
    assert re.search(rf"key {key_id}: unknown or revoked", daemon.log())


def test_a_tenants_budget_holds_only_its_jobs_and_its_queue_cap_only_it(daemon: Daemon) -> None:
    daemon.cli("tenant", "add", "poor", "--daily-budget-usd", "0", "--max-queued", "2")
    admin, poor, acme = daemon.token, new_key(daemon, "poor"), new_key(daemon, "acme")

    def held() -> bool:
        text = call(daemon, admin, "GET", "/metrics").text
        return 'briefd_tenant_budget_held{tenant="poor"} 1.0' in text

    assert wait_for(held, 15), "the daemon reads tenants every few seconds"
    for n in (1, 2):
        assert call(daemon, poor, "POST", "/v1/jobs", make_job(f"p{n}")).status_code == 202
    r = call(daemon, poor, "POST", "/v1/jobs", make_job("p3"))
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert call(daemon, acme, "POST", "/v1/jobs", make_job("rich")).status_code == 202
    assert wait_done(daemon, acme, "rich")["status"] == "succeeded", "others are untouched"
    for n in (1, 2):
        assert call(daemon, poor, "GET", f"/v1/jobs/p{n}").json()["status"] == "queued"
    daemon.cli("tenant", "add", "poor", "--daily-budget-usd", "100", "--max-queued", "2")
    for n in (1, 2):
        assert wait_done(daemon, poor, f"p{n}")["status"] == "succeeded"
    metrics = call(daemon, admin, "GET", "/metrics").text
    assert 'briefd_tenant_jobs{state="succeeded",tenant="poor"} 2.0' in metrics
    assert re.search(r'briefd_tenant_queue_wait_seconds\{quantile="0.95",tenant="poor"\}', metrics)
    assert re.search(r'briefd_tenant_tokens_total\{kind="input",tenant="acme"\} [1-9]', metrics)


def test_per_key_rates_and_failed_authentications_are_limited(
    sim: SimServer, tmp_path: Path
) -> None:
    d = Daemon(
        tmp_path,
        sim.base_url,
        auth_failures_per_minute=3,
        api_rate_per_key=0.5,
        api_burst_per_key=2,
    )
    d.cli("tenant", "add", "acme")
    key, other = new_key(d, "acme", "read"), new_key(d, "acme", "read")
    d.start()
    try:
        codes = [call(d, key, "GET", "/v1/jobs").status_code for _ in range(3)]
        assert codes == [200, 200, 429], codes
        r = call(d, key, "GET", "/v1/jobs")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 2
        assert call(d, other, "GET", "/v1/jobs").status_code == 200, "per key"
        assert call(d, d.token, "GET", "/v1/jobs").status_code == 200, "the token file: no limit"

        guess = "bfk_0123456789ab_" + "G" * 43
        codes = [call(d, guess, "GET", "/v1/jobs").status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429], codes
        r = call(d, d.token, "GET", "/v1/jobs")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, "the token file too"
        assert call(d, guess, "GET", "/v1/jobs").status_code == 429
        # A real API key from the same address still works: it cannot be guessed.
        assert call(d, other, "GET", "/v1/jobs").status_code == 200
        assert guess not in d.log() and "G" * 20 not in d.log()
        assert "key 0123456789ab: unknown or revoked" in d.log()
    finally:
        d.stop()
