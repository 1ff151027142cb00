"""A job owns its output contract: its schemas are asked for and validated; none means any JSON."""

from __future__ import annotations

from typing import Any

import briefd
from briefd.messages import ErrorCode, JobStatus, SchemaSource

TOTALS = {
    "type": "object",
    "properties": {"total_usd": {"type": "number"}, "currency": {"type": "string"}},
    "required": ["total_usd", "currency"],
    "additionalProperties": False,
}


def test_a_job_schema_is_asked_for_and_checked(make_settings: Any, make_job: Any) -> None:
    """A procurement prompt of the user's own shape gets a document of that shape, not briefd's."""
    job = make_job("contract-1", schemas={"PROCUREMENT_JSON": TOTALS})
    result = briefd.run(job, make_settings())
    assert result.status is JobStatus.SUCCEEDED, result.errors
    # The simulator shapes its answer by the schema in response_format: this is the job's.
    assert set(result.documents["PROCUREMENT_JSON"]) == {"total_usd", "currency"}
    assert result.checked_against == {
        "PROCUREMENT_JSON": SchemaSource.JOB,
        "ANNEX_JSON": SchemaSource.NONE,
    }


def test_without_a_schema_any_json_is_accepted(make_settings: Any, make_job: Any) -> None:
    """The built-in pipeline invents no contract: a JSON stage takes any JSON value that parses."""
    result = briefd.run(make_job("contract-2"), make_settings())
    assert result.status is JobStatus.SUCCEEDED, result.errors
    assert isinstance(result.documents["ANNEX_JSON"], dict)
    assert set(result.checked_against.values()) == {SchemaSource.NONE}


def test_a_document_that_breaks_the_job_schema_fails(make_settings: Any, make_job: Any) -> None:
    """Not asked for (response_format none), the answer is still checked against the schema."""
    job = make_job("contract-3", schemas={"ANNEX_JSON": TOTALS})
    result = briefd.run(job, make_settings(response_format="none"))
    assert result.status is JobStatus.PARTIAL
    (error,) = result.errors
    assert error.stage == "ANNEX_JSON" and error.code is ErrorCode.INVALID_JSON
    assert "schema" in error.message
