"""How a stream shows an event's job id to a tenant (:func:`briefd.tenants.api.shown_event`):
bare for the caller's own job, as ``GET /v1/jobs/{id}`` shows it; untouched for the default
tenant and for another tenant's job (an admin's view); never inside a stage's document."""

from __future__ import annotations

import json

from log_helpers import succeeded_result

from briefd.messages import JobCompleted, JobResult, JobStatus, StageSucceeded
from briefd.store.events import STREAMED
from briefd.tenants.api import shown_event


def test_every_streamed_event_starts_type_ts_job_id() -> None:
    """The rewrite relies on it: the first ``"job_id":`` of an event's JSON is its own."""
    for cls in STREAMED:
        assert list(cls.model_fields)[:3] == ["type", "ts", "job_id"], cls.__name__
    assert next(iter(JobResult.model_fields)) == "job_id"


def test_a_tenants_own_job_shows_bare_and_a_document_is_untouched() -> None:
    doc = {"job_id": "beta.q3", "note": '"job_id":"beta.q3"'}
    event = StageSucceeded(job_id="beta.q3", stage="S", document=doc, elapsed_ms=1, attempts=1)
    data = event.model_dump_json()
    shown = json.loads(shown_event("beta", "beta.q3", data))
    assert shown["job_id"] == "q3" and shown["document"] == doc
    assert shown_event("acme", "beta.q3", data) == data  # acme's admin: the full key
    assert shown_event("default", "beta.q3", data) == data  # the token file: the full key
    plain = StageSucceeded(job_id="q3", stage="S", document="x", elapsed_ms=1, attempts=1)
    assert shown_event("default", "q3", plain.model_dump_json()) == plain.model_dump_json()


def test_a_completed_jobs_result_shows_its_bare_id_too() -> None:
    done = JobCompleted(
        job_id="beta.q3", result=succeeded_result("beta.q3", {"S": {"job_id": "beta.q3"}})
    )
    shown = json.loads(shown_event("beta", "beta.q3", done.model_dump_json()))
    assert shown["job_id"] == "q3" and shown["result"]["job_id"] == "q3"
    assert shown["result"]["documents"] == {"S": {"job_id": "beta.q3"}}
    assert shown["tenant"] == "beta"
    assert JobCompleted.model_validate(shown).result.status is JobStatus.SUCCEEDED
