"""A 429 does not spend BRIEFD_MAX_RETRIES; a separate, larger bound still ends the stage."""

from __future__ import annotations

import pytest

from briefd.config import Settings
from briefd.llm.errors import StatusError, StreamError, TransportError
from briefd.llm.retry import RetryDriver, make_retrying, outcome_of
from briefd.messages import ErrorCode


def _settings(**kw: object) -> Settings:
    return Settings(base_url="http://127.0.0.1:9/v1", backoff_initial_s=0, **kw)  # type: ignore[arg-type]


def test_429s_do_not_count_toward_max_retries() -> None:
    driver = RetryDriver(make_retrying(_settings(max_retries=1)))
    for _ in range(5):
        driver.failed(StatusError(429, "slow down", retry_after=0.0))  # never gives up here
    driver.failed(StatusError(502, "bad gateway"))  # the one real retry
    with pytest.raises(StatusError):
        driver.failed(StatusError(502, "bad gateway"))


@pytest.mark.parametrize("bound", [0, 2, 20])
def test_a_server_that_429s_forever_ends_the_stage_after_the_setting(bound: int) -> None:
    """BRIEFD_MAX_RATE_LIMITED bounds the 429 retries: ``bound`` retries, then give up."""
    driver = RetryDriver(make_retrying(_settings(max_retries=2, max_rate_limited=bound)))
    for _ in range(bound):
        driver.failed(StatusError(429, "slow down", retry_after=0.0))
    with pytest.raises(StatusError):
        driver.failed(StatusError(429, "slow down", retry_after=0.0))
    assert driver.attempt == bound + 1


def test_the_429_bound_defaults_to_20() -> None:
    assert Settings(base_url="http://127.0.0.1:9/v1").max_rate_limited == 20


def test_retry_disabled_means_one_call_even_for_a_429() -> None:
    driver = RetryDriver(make_retrying(_settings(retry_enabled=False)))
    with pytest.raises(StatusError):
        driver.failed(StatusError(429, "slow down"))


def test_outcomes_for_the_window() -> None:
    assert outcome_of(StatusError(429, "x")) == "rate_limited"
    assert outcome_of(StatusError(503, "x")) == "rate_limited"
    assert outcome_of(StatusError(429, "x", upstream_code="insufficient_quota")) == "other"
    assert outcome_of(StatusError(502, "x")) == "overloaded"
    timeout = TransportError("t", code=ErrorCode.TIMEOUT, hint="h")
    assert outcome_of(timeout) == "overloaded"
    assert outcome_of(StatusError(400, "x")) == "other"
    stalled = TransportError("s", code=ErrorCode.STALLED, hint="h")
    assert outcome_of(stalled) == "overloaded"  # a stalled stream: a timeout seen sooner
    assert outcome_of(StreamError("mid-answer", None)) == "overloaded"
    assert outcome_of(StreamError("no", "insufficient_quota")) == "other"
