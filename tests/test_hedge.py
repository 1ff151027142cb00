"""Hedging (BRIEFD_HEDGE_AFTER_MS): the cap, the race against the real simulator, the
second copy's own execution token, and the loser's cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from briefd.api import Pipeline
from briefd.config import ConfigError, Settings
from briefd.llm.hedge import BUDGET, HedgeBudget, parse_hedge_after
from briefd.messages import Event, JobStatus, StageHedged, StageSucceeded
from briefd.sim.faults import Fault
from briefd.sim.server import SimServer

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


@pytest.fixture(autouse=True)
def _fresh_budget() -> Iterator[None]:
    """The budget is the process's: each test starts from nothing and leaves nothing."""
    BUDGET.reset()
    yield
    BUDGET.reset()


def test_hedges_are_at_most_a_tenth_of_calls() -> None:
    """hedges + 1 <= 10 % of calls: none before the tenth call, then one per ten."""
    budget = HedgeBudget()
    granted = []
    for _ in range(200):
        budget.called()
        granted.append(budget.take())
    assert sum(granted) == 20 and not any(granted[:9]) and granted[9]
    assert budget.hedges <= 0.1 * budget.calls


def test_p95_needs_enough_first_tokens() -> None:
    budget = HedgeBudget()
    for ms in range(19):
        budget.saw_first_token(ms / 1000)
    assert budget.p95() is None  # 19 samples: no estimate, no hedge
    for ms in range(19, 100):
        budget.saw_first_token(ms / 1000)
    assert budget.p95() == pytest.approx(0.094)


def test_the_setting_is_ms_or_p95() -> None:
    assert parse_hedge_after("250") == 0.25 and parse_hedge_after("P95") == "p95"
    assert parse_hedge_after(None) is None
    with pytest.raises(ConfigError, match="BRIEFD_HEDGE_AFTER_MS"):
        parse_hedge_after("-5")
    assert Settings(hedge_after_ms=" P95 ").hedge_after_ms == "p95"
    with pytest.raises(ValueError, match="milliseconds"):
        Settings(hedge_after_ms="soon")


def job(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "prompts": {s: f"Write the {s} for {job_id}.\nFocus on renewal." for s in STAGES},
        "procurement_metrics": {"summary": "from the CRM", "vendors": []},
    }


class Events:
    """Every event the pipeline publishes (observers run in actors' threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        with self._lock:
            return [e for e in self._events if isinstance(e, kind)]


def test_a_straggler_is_hedged_and_the_hedge_wins(sim: SimServer, make_settings: Any) -> None:
    """BRIEFING_MD's first request would wait 20 s for its first token; its hedge, sent after
    0.2 s, answers at once: the job ends in seconds, the straggler is cut, one hedge counted."""
    BUDGET.calls = 100  # room under the cap for this test's one hedge
    sim.inject(Fault(stage="BRIEFING_MD", first_token_s=20, times=1))
    events = Events()
    started = time.monotonic()
    with Pipeline(make_settings(hedge_after_ms="200", timeout_ms=60_000), observers=[events]) as p:
        result = p.submit(job("h1")).get(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    assert time.monotonic() - started < 15  # the straggler alone takes 20 s
    [hedged] = events.of(StageHedged)
    assert hedged.stage == "BRIEFING_MD" and hedged.winner == "hedge" and hedged.after_ms == 200
    assert sim.stats().by_stage["BRIEFING_MD"] == 2
    assert sim.wait_until_idle(timeout=10)  # the cut straggler's connection is gone
    assert BUDGET.hedges == 1


def test_the_first_copy_wins_when_it_writes_first(sim: SimServer, make_settings: Any) -> None:
    """Both copies slow to start, the first ahead: it wins, the hedge is cut, and the stage
    is served by the first copy."""
    BUDGET.calls = 100
    sim.inject(Fault(stage="BRIEFING_MD", first_token_s=0.6, times=1))
    sim.inject(Fault(stage="BRIEFING_MD", first_token_s=5, times=1))  # the hedge's
    events = Events()
    with Pipeline(make_settings(hedge_after_ms="200"), observers=[events]) as p:
        result = p.submit(job("h2")).get(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    [hedged] = events.of(StageHedged)
    assert hedged.winner == "primary"
    done = [e for e in events.of(StageSucceeded) if e.stage == "BRIEFING_MD"]
    assert len(done) == 1 and done[0].attempts == 1
    assert sim.wait_until_idle(timeout=10)


def test_hedges_stay_under_the_cap_and_take_their_own_tokens(
    sim: SimServer, make_settings: Any
) -> None:
    """Every call slow to its first token, hedge after 50 ms, K=2: hedges are at most 10 % of
    the calls, and the server never sees more than K calls at once (a hedge waits for a token
    of its own like any stage)."""
    sim.inject(Fault(first_token_s=0.3, times=None))
    events = Events()
    settings = make_settings(hedge_after_ms="50", max_concurrent=2)
    with Pipeline(settings, observers=[events]) as p:
        futures = [p.submit(job(f"cap-{i}")) for i in range(8)]
        results = [f.get(timeout=120) for f in futures]
    assert all(r.status is JobStatus.SUCCEEDED for r in results)
    hedges = events.of(StageHedged)
    stats = sim.stats()
    launched = [h for h in hedges if h.route]
    assert len(hedges) >= 1  # the cap allowed some: the test exercises them
    assert BUDGET.hedges == len(hedges) <= 0.1 * BUDGET.calls
    assert BUDGET.calls == 32  # one per stage call (no retries here)
    assert stats.total_requests <= BUDGET.calls + len(launched)
    assert stats.max_in_flight <= 2
