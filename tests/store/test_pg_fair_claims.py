"""The cluster's claim is fair across tenants: a tenant with nothing claimed goes first.

Two :class:`PostgresStore` objects on one database stand for two daemons. Tenant
``a`` queues many jobs, ``b`` one after them: with ``weights`` the claim takes b's
job before a's second, whichever daemon claims, counting what is claimed anywhere
in the cluster; weights share the claims; a tenant's own order (aged priority, then
oldest) holds inside its share; held tenants are skipped; and without ``weights``
(one tenant) the order is today's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from briefd.config import PipelineSpec, Settings
from briefd.messages import JobSpec
from briefd.store.postgres import PostgresStore
from briefd.tenants.ids import internal_id, tenant_of

from .conftest import Backend

Spec = Callable[[str], JobSpec]


@pytest.fixture
def two(pg_url: str, tmp_path: Path, pipeline: PipelineSpec) -> Iterator[tuple[Any, Any]]:
    b = Backend("postgres", Settings(data_dir=tmp_path / "data", database_url=pg_url), pipeline)
    first, second = b.daemons()
    assert isinstance(first, PostgresStore) and isinstance(second, PostgresStore)
    yield first, second
    for store in b.opened:
        store.close()


def _add(store: PostgresStore, spec: Spec, tenant: str, job_id: str, priority: int = 0) -> str:
    key = internal_id(tenant, job_id)
    store.add_job(spec(job_id).model_copy(update={"job_id": key, "priority": priority}))
    return key


def test_a_tenant_with_nothing_claimed_goes_before_another_tenants_second_job(
    two: tuple[PostgresStore, PostgresStore], spec: Spec
) -> None:
    one, other = two
    a_jobs = [_add(one, spec, "a", f"j{i}") for i in range(20)]
    b_job = _add(other, spec, "b", "only")
    weights = {"a": 1.0, "b": 1.0}
    (first,) = one.claim("d1", 1, 30.0, weights=weights)
    assert first.job_id == a_jobs[0], "nothing claimed anywhere: the oldest"
    (second,) = other.claim("d2", 1, 30.0, weights=weights)
    assert second.job_id == b_job, "a holds one place in the cluster: b's first goes next"
    rest = [c.job_id for c in one.claim("d1", 5, 30.0, weights=weights)]
    assert rest == a_jobs[1:6], "then a's, oldest first"


def test_without_weights_the_claim_is_oldest_first_across_tenants(
    two: tuple[PostgresStore, PostgresStore], spec: Spec
) -> None:
    """One tenant configured: today's query and order (this is what the fair claim fixes)."""
    one, _ = two
    a_jobs = [_add(one, spec, "a", f"j{i}") for i in range(4)]
    _add(one, spec, "b", "only")
    assert [c.job_id for c in one.claim("d1", 4, 30.0)] == a_jobs


def test_claims_share_places_by_weight_and_keep_each_tenants_order(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    one, other = two
    for i in range(10):
        _add(one, spec, "a", f"j{i}")
    b_jobs = [_add(other, spec, "b", f"j{i}", priority=1 if i == 7 else 0) for i in range(10)]
    weights = {"a": 1.0, "b": 3.0}
    got = [c.job_id for c in one.claim("d1", 4, 30.0, weights=weights)]
    got += [c.job_id for c in other.claim("d2", 4, 30.0, weights=weights)]
    assert Counter(tenant_of(j) for j in got) == {"a": 2, "b": 6}
    b_order = [j for j in got if tenant_of(j) == "b"]
    assert b_order[0] == b_jobs[7], "b's priority still works inside its share"
    assert b_order[1:] == b_jobs[:5]


def test_held_tenants_are_skipped_by_the_fair_claim(
    two: tuple[PostgresStore, PostgresStore], spec: Spec
) -> None:
    one, _ = two
    _add(one, spec, "a", "j0")
    b_job = _add(one, spec, "b", "j0")
    got = one.claim("d1", 5, 30.0, held=["a"], weights={"a": 1.0, "b": 1.0})
    assert [c.job_id for c in got] == [b_job]


def test_newcomers_claims_only_a_tenant_with_nothing_claimed(
    two: tuple[PostgresStore, PostgresStore], spec: Spec
) -> None:
    """A full daemon's claim past its window: only the first job of a tenant with nothing
    claimed anywhere; none once every waiting tenant has one."""
    one, other = two
    _add(one, spec, "a", "j0")
    _add(one, spec, "a", "j1")
    weights = {"a": 1.0, "b": 1.0}
    (first,) = one.claim("d1", 1, 30.0, weights=weights)
    assert other.claim("d2", 1, 30.0, weights=weights, newcomers=True) == [], "a has one"
    b_jobs = [_add(other, spec, "b", f"j{i}") for i in range(2)]
    (got,) = other.claim("d2", 1, 30.0, weights=weights, newcomers=True)
    assert got.job_id == b_jobs[0], "b's oldest"
    assert one.claim("d1", 1, 30.0, weights=weights, newcomers=True) == [], "b has one now"
    assert first.job_id == "a.j0"
