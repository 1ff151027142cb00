"""A stage's RequestToken carries its job's tenant and the tenant's weight (for the fair share)."""

from __future__ import annotations

from actor_helpers import coordinate

from briefd.config import Settings, load_pipeline
from briefd.messages import JobSpec, RequestToken
from briefd.tenants.weights import set_weights, weight_of


def _first_request(job: JobSpec) -> RequestToken:
    _done, requests = coordinate(job, Settings(base_url="http://127.0.0.1:9/v1"))
    return requests.get(timeout=10)


def test_requests_carry_the_tenant_and_its_weight() -> None:
    pipeline = load_pipeline()
    prompts = {s.name: "Write it." for s in pipeline.stages}
    set_weights({"acme": 3.0})
    try:
        job = JobSpec(job_id="acme.q3", tenant="acme", prompts=prompts)
        got = _first_request(job)
        assert (got.job_id, got.tenant, got.weight) == ("acme.q3", "acme", 3.0)
        plain = _first_request(JobSpec(job_id="q3", prompts=prompts))
        assert (plain.tenant, plain.weight) == ("default", 1.0)
    finally:
        set_weights({})
    assert weight_of("acme") == 1.0
