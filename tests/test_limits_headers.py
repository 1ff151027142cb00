"""Rate-limit headers in every format servers send, and garbage."""

from __future__ import annotations

import pytest

from briefd.limits.headers import parse_duration, parse_rate_limits

NOW = 1_755_780_000.0  # 2025-08-21T12:40:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("1m30.5s", 90.5),
        ("0.5", 0.5),
        ("250us", 0.00025),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s junk", "-3", "s", "nan", "inf", "1m-2s"])
def test_garbage_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers() -> None:
    got = parse_rate_limits(
        {
            "X-RateLimit-Remaining-Requests": "0",
            "x-ratelimit-remaining-tokens": "1500",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-reset-tokens": "12ms",
        },
        maximum=120,
        now=NOW,
    )
    assert got.remaining_requests == 0 and got.remaining_tokens == 1500
    assert got.reset_requests_s == 120  # clamped to BRIEFD_RETRY_AFTER_MAX_S
    assert got.reset_tokens_s == pytest.approx(0.012)
    assert got.retry_after_s is None


def test_retry_after_ms_wins_over_retry_after() -> None:
    got = parse_rate_limits({"retry-after-ms": "1500", "retry-after": "9"}, maximum=120, now=NOW)
    assert got.retry_after_s == pytest.approx(1.5)


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_rate_limits({"Retry-After": "7"}, maximum=120, now=NOW).retry_after_s == 7
    date = "Thu, 21 Aug 2025 12:40:30 GMT"
    got = parse_rate_limits({"Retry-After": date}, maximum=120, now=NOW)
    assert got.retry_after_s == pytest.approx(30.0)
    past = parse_rate_limits({"Retry-After": "Thu, 21 Aug 2025 12:00:00 GMT"}, maximum=9, now=NOW)
    assert past.retry_after_s == 0.0


def test_anthropic_headers_with_rfc3339_resets() -> None:
    got = parse_rate_limits(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-tokens-remaining": "42",
            "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
            "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:10+00:00",
        },
        maximum=120,
        now=NOW,
    )
    assert got.remaining_requests == 0 and got.remaining_tokens == 42
    assert got.reset_requests_s == pytest.approx(59.0)
    assert got.reset_tokens_s == pytest.approx(10.0)


def test_garbage_headers_are_ignored_one_by_one() -> None:
    got = parse_rate_limits(
        {
            "x-ratelimit-limit-requests": "many",
            "x-ratelimit-limit-tokens": "1e9",
            "x-ratelimit-remaining-requests": "lots",
            "x-ratelimit-remaining-tokens": "-1",
            "x-ratelimit-reset-requests": "whenever",
            "anthropic-ratelimit-tokens-reset": "2025-08-21 noon",
            "retry-after": "Someday, 99 Foo 2025",
            "retry-after-ms": "NaN",
        },
        maximum=120,
        now=NOW,
    )
    assert got.model_dump() == {
        "limit_requests": None,
        "limit_tokens": None,
        "remaining_requests": None,
        "remaining_tokens": None,
        "reset_requests_s": None,
        "reset_tokens_s": None,
        "retry_after_s": None,
    }
    assert parse_rate_limits({}, maximum=1).remaining_requests is None


def test_budget_sizes_from_openai_and_anthropic_headers() -> None:
    """``limit`` (what a budget holds when full), which the limiter learns a refill rate from."""
    openai = parse_rate_limits(
        {"x-ratelimit-limit-requests": "500", "X-RateLimit-Limit-Tokens": "30000"},
        maximum=120,
        now=NOW,
    )
    assert (openai.limit_requests, openai.limit_tokens) == (500, 30000)
    anthropic = parse_rate_limits(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:01Z",
        },
        maximum=120,
        now=NOW,
    )
    assert (anthropic.limit_requests, anthropic.limit_tokens) == (50, 40000)
    assert anthropic.reset_requests_s == pytest.approx(1.0)
