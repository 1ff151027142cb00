"""publish() builds an event's log record only when a sink will take it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from briefd.messages import JobStarted, TokenGranted
from briefd.ops import events

GRANT = TokenGranted(job_id="j", stage="BRIEFING_MD", lease_id=1, in_use=1, capacity=2)
STARTED = JobStarted(job_id="j", stages=["BRIEFING_MD"], parallel=True, max_concurrent=2)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The event types whose v1 payload publish() computed."""
    seen: list[str] = []
    real = events.event_payload

    def counting(event: Any) -> dict[str, Any]:
        seen.append(event.type)
        return real(event)

    monkeypatch.setattr(events, "event_payload", counting)
    logger.remove()  # loguru's default DEBUG stderr handler would take everything
    yield seen
    logger.disable("briefd")
    logger.add(sys.stderr, level="DEBUG")  # loguru's default again


def test_no_record_is_built_below_every_sinks_level(built: list[str]) -> None:
    logger.enable("briefd")
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    heard: list[Any] = []
    try:
        events.publish(GRANT, [heard.append])  # DEBUG: no sink takes it
        events.publish(STARTED, [heard.append])  # INFO: written
    finally:
        logger.remove(sink)
    assert built == ["JobStarted"]
    assert heard == [GRANT, STARTED]  # observers hear every event all the same
    assert len(lines) == 1


def test_a_debug_sink_gets_every_event(built: list[str]) -> None:
    logger.enable("briefd")
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        events.publish(GRANT)
    finally:
        logger.remove(sink)
    assert built == ["TokenGranted"]
    assert "got a token" in lines[0]


def test_a_quiet_library_builds_nothing(built: list[str]) -> None:
    logger.disable("briefd")
    sink = logger.add(lambda m: None, level="DEBUG")
    try:
        events.publish(GRANT)
        events.publish(STARTED)
    finally:
        logger.remove(sink)
    assert built == []
