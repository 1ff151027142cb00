"""Shared fixtures: a simulated OpenAI server on loopback, settings that point at it,
a sample job, captured logs, and a clean actor registry after every test."""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from actor_helpers import Inbox
from daemon_helpers import Daemon
from loguru import logger
from pg import pg_server, pg_url  # noqa: F401  (fixtures: the throwaway PostgreSQL)

from briefd.config import Settings
from briefd.sim.server import SimProfile, SimServer

# Scale the seed's 7/7/5/6 s profile down to 70/70/50/60 ms.
SCALE = 0.01
STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    """No actor outlives its test (pykka has no supervision to do this for us)."""
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)


@pytest.fixture
def inbox() -> Iterator[tuple[Any, queue.Queue[Any]]]:
    """A stand-in requester (:class:`actor_helpers.Inbox`) and the queue of what it is told."""
    got: queue.Queue[Any] = queue.Queue()
    ref = Inbox.start(got)
    yield ref, got
    ref.stop()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=SCALE)) as server:
        yield server


class SettingsFactory:
    """Settings for a test: the sim, fast backoffs, and whatever the test overrides."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim

    def __call__(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "base_url": self.sim.base_url,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "timeout_ms": 5_000,
        }
        values.update(overrides)
        return Settings(**values)


@pytest.fixture
def make_settings(sim: SimServer) -> SettingsFactory:
    return SettingsFactory(sim)


def _make_job(job_id: str = "acme-1", **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_id": job_id,
        "prompts": {s: f"Write the {s} for Acme Corp.\nFocus on renewal." for s in STAGES},
        "procurement_metrics": {"summary": "from the CRM", "vendors": []},
    }
    job.update(extra)
    return job


@pytest.fixture
def make_job() -> Any:
    """A factory of jobs for the default pipeline, prompts differing per stage."""
    return _make_job


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line (DEBUG and up, text with bound extras) written during the test.

    briefd is a quiet library (disabled at import); the fixture enables it, as an
    application's ``setup_logging`` does, and disables it again afterwards."""
    lines: list[str] = []
    logger.enable("briefd")
    sink_id = logger.add(
        lambda m: lines.append(str(m) + repr(m.record["extra"])),
        level="DEBUG",
        diagnose=False,
        backtrace=False,
        format="{level} {message}",
    )
    yield lines
    logger.remove(sink_id)
    logger.disable("briefd")


@pytest.fixture
def briefd_cmd() -> Any:
    """``briefd_cmd(*args)``: the briefd command line, run by this interpreter."""

    def cmd(*args: str) -> list[str]:
        return [sys.executable, "-m", "briefd", *args]

    return cmd


@pytest.fixture
def child_env() -> Any:
    """``child_env(**extra)``: this environment without BRIEFD_* variables, plus ``extra``."""

    def env(**extra: str) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}
        out.update(extra)
        return out

    return env


@pytest.fixture
def repo() -> Path:
    """The checkout's root (examples/, config/)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """``briefd serve`` children a test starts (it appends them); any still running is killed."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()
