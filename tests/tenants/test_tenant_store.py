"""Tenants, keys and per-tenant job reads on both backends (SQLite, the throwaway PostgreSQL),
and the authenticator's cache, revocation, scopes and limits with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from briefd.config import Settings, load_pipeline
from briefd.messages import JobSpec, JobState
from briefd.store import open_store
from briefd.tenants.auth import BUILTIN, Authenticator
from briefd.tenants.ids import internal_id, parse_key, split_id
from briefd.tenants.store import Tenant, TenantStore

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


@pytest.fixture(params=("sqlite", "postgres"))
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Settings(data_dir=tmp_path / "data", database_url=url)


@pytest.fixture
def stores(settings: Settings) -> Iterator[tuple[Any, TenantStore]]:
    journal = open_store(settings, load_pipeline())
    tenants = TenantStore(settings)
    yield journal, tenants
    tenants.close()
    journal.close()


def _job(tenant: str, job_id: str) -> JobSpec:
    return JobSpec(
        job_id=internal_id(tenant, job_id),
        tenant=tenant,
        prompts={s: f"{s} of {job_id}" for s in STAGES},
        procurement_metrics={"source": "fallback"},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tenants_are_added_updated_and_listed(stores: tuple[Any, TenantStore]) -> None:
    _, store = stores
    assert list(store.tenants()) == ["default"], "default exists without a row"
    assert store.put_tenant(Tenant("acme", 2.0, 5.0, 10)) is True
    assert store.put_tenant(Tenant("acme", 3.0, None, None)) is False
    assert store.tenants()["acme"] == Tenant("acme", 3.0, None, None)
    assert sorted(store.tenants()) == ["acme", "default"]


def test_keys_are_created_listed_revoked_and_only_their_hash_stored(
    stores: tuple[Any, TenantStore], settings: Settings
) -> None:
    _, store = stores
    store.put_tenant(Tenant("acme"))
    made = store.create_key("acme", ("submit", "read"))
    listed = store.list_keys()
    assert [(k.key_id, k.tenant, k.scopes) for k in listed] == [
        (made.key_id, "acme", ("submit", "read"))
    ]
    assert made.token not in repr(listed) and listed[0].digest != made.token
    # A second store (another daemon, the CLI) shares the server secret: the key verifies there.
    other = TenantStore(settings)
    try:
        auth = Authenticator("the-token-file", other)
        assert auth.verify(made.token) is not None
        assert auth.verify(made.token[:-1] + ("A" if made.token[-1] != "A" else "B")) is None
    finally:
        other.close()
    assert store.revoke_key(made.key_id) is True
    assert store.revoke_key(made.key_id) is False, "revoked once"
    assert Authenticator("t", store).verify(made.token) is None
    with pytest.raises(Exception, match="no such tenant"):
        store.create_key("nobody", ("read",))


def test_jobs_of_each_tenant_apart_with_the_same_id(stores: tuple[Any, TenantStore]) -> None:
    journal, store = stores
    for tenant in ("default", "acme", "a_c"):
        journal.add_job(_job(tenant, "acme-q3"))
    journal.add_job(_job("acme", "other"))
    journal.add_job(_job("a", "x"))  # tenant "a": not a prefix match of "acme" or "a_c"
    assert store.job_keys("default", None, 100) == ["acme-q3"]
    assert store.job_keys("acme", None, 100) == ["acme.other", "acme.acme-q3"]
    assert store.job_keys("a_c", None, 100) == ["a_c.acme-q3"], "'_' is no wildcard"
    assert store.job_keys("a", JobState.QUEUED, 100) == ["a.x"]
    assert store.queued("acme") == 2 and store.queued("nobody") == 0
    counts = store.counts()
    assert counts["acme"]["queued"] == 2 and counts["default"]["queued"] == 1
    assert journal.get("acme.acme-q3").tenant == "acme"
    assert journal.get("acme-q3").tenant == "default"


def test_internal_keys_split_back_and_only_admins_name_them() -> None:
    assert internal_id("default", "q3") == "q3" and internal_id("acme", "q3") == "acme.q3"
    assert split_id("acme.q3") == ("acme", "q3") and split_id("q3") == ("default", "q3")
    assert parse_key("acme.q3") == "acme.q3"
    for bad in ("default.q3", "Acme.q3", "acme.q.3", "acme.", ".q3"):
        assert parse_key(bad) is None, bad
    with pytest.raises(ValueError, match="reserved"):
        JobSpec(job_id="acme.q3", prompts={})  # a default job may not look like acme's


def test_a_verified_key_is_cached_then_checked_again(stores: tuple[Any, TenantStore]) -> None:
    _, store = stores
    store.put_tenant(Tenant("acme"))
    made = store.create_key("acme", ("read",))
    clock = Clock()
    auth = Authenticator("tok", store, cache_s=2.0, clock=clock)
    assert auth.cached(made.token) is None, "not verified yet"
    principal = auth.verify(made.token)
    assert principal is not None and principal.tenant == "acme"
    assert auth.cached(made.token) == principal
    store.revoke_key(made.key_id)
    assert auth.cached(made.token) == principal, "trusted for key_cache_s"
    clock.now += 2.01
    assert auth.cached(made.token) is None and auth.verify(made.token) is None
    assert auth.cached("tok") is BUILTIN


def test_scopes_and_the_per_key_rate(stores: tuple[Any, TenantStore]) -> None:
    _, store = stores
    store.put_tenant(Tenant("acme"))
    clock = Clock()
    auth = Authenticator("tok", store, rate_per_s=2.0, burst=3.0, clock=clock)
    reader = auth.verify(store.create_key("acme", ("read",)).token)
    other = auth.verify(store.create_key("acme", ("read", "submit")).token)
    assert reader is not None and other is not None
    no = auth.admit(reader, "POST", "/v1/jobs")
    assert no is not None and (no.status, no.code) == (403, "forbidden")
    assert auth.admit(reader, "GET", "/metrics") is not None, "metrics: admin only"
    assert auth.admit(reader, "DELETE", "/v1/jobs/x") is not None
    for _ in range(2):  # the 403s above spent nothing; the burst is 3
        assert auth.admit(reader, "GET", "/v1/jobs") is None
    assert auth.admit(reader, "GET", "/v1/jobs") is None
    limited = auth.admit(reader, "GET", "/v1/jobs")
    assert limited is not None and limited.status == 429 and limited.retry_after == 1
    assert auth.admit(other, "GET", "/v1/jobs") is None, "another key has its own bucket"
    clock.now += 0.5  # one request's worth at 2/s
    assert auth.admit(reader, "GET", "/v1/jobs") is None
    for _ in range(100):
        assert auth.admit(BUILTIN, "GET", "/v1/jobs") is None, "the token file: no limit"


def test_failed_authentications_are_limited_per_address() -> None:
    clock = Clock()
    auth = Authenticator("tok", None, failures_per_minute=3.0, clock=clock)
    for _ in range(3):
        assert auth.locked_out("10.0.0.1") is None
        assert auth.failed("10.0.0.1", "bfk_0123456789ab_" + "x" * 43).status == 401
    locked = auth.locked_out("10.0.0.1")
    assert locked is not None and locked.status == 429 and locked.retry_after == 20
    assert auth.locked_out("10.0.0.2") is None, "per address"
    clock.now += 20
    assert auth.locked_out("10.0.0.1") is None
