"""In-process ``on_event`` callbacks: every event, on the dispatcher thread, never in the way.

Jobs run against the simulator over loopback; the dispatcher's merge and drop rules are
checked on the dispatcher itself with a callback held on a ``threading.Event``.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from actor_helpers import eventually

import briefd
import briefd.messages
from briefd import events
from briefd.dispatch import EventDispatcher
from briefd.messages import JobStatus
from briefd.runs import JobRun
from briefd.sim.server import SimServer

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


def test_event_types_are_exported_as_briefd_events() -> None:
    """``briefd.events.StageStarted`` is the message class itself, reachable from ``import
    briefd`` alone, with every name in ``__all__`` real."""
    assert briefd.events is events
    assert events.StageStarted is briefd.messages.StageStarted
    assert events.JobCompleted is briefd.messages.JobCompleted
    for name in events.__all__:
        assert getattr(events, name) is not None
    assert "briefd-events" in (events.__doc__ or "")


def test_run_calls_back_every_event_in_order_on_the_dispatcher_thread(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """``briefd.run(on_event=)``: each stage starts then succeeds, JobCompleted is the last
    event and has arrived when ``run`` returns; every call is on ``briefd-events``."""
    seen: list[tuple[str, str, str]] = []

    def record(event: events.Event) -> None:
        seen.append((threading.current_thread().name, event.type, getattr(event, "stage", "")))

    result = briefd.run(make_job("cb-1"), make_settings(), on_event=record)
    assert result.status is JobStatus.SUCCEEDED
    assert seen, "no event was delivered"
    assert {thread for thread, _, _ in seen} == {"briefd-events"}
    assert seen[-1][1] == "JobCompleted"
    assert [t for _, t, _ in seen].count("JobCompleted") == 1
    for stage in STAGES:
        kinds = [t for _, t, s in seen if s == stage]
        assert kinds.index("StageStarted") < kinds.index("StageSucceeded"), (stage, kinds)
    assert seen[0][1] == "JobStarted"


def test_a_blocked_callback_does_not_stall_the_job(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """A callback stuck on its first event: the job still ends and its future resolves;
    released, the callback then gets the rest, JobCompleted included."""
    release = threading.Event()
    got: list[str] = []

    def stuck(event: events.Event) -> None:
        release.wait(30)
        got.append(event.type)

    with briefd.Pipeline(make_settings()) as pipeline:
        result = pipeline.submit(make_job("cb-stuck"), on_event=stuck).get(timeout=30)
        assert result.status is JobStatus.SUCCEEDED
        assert got == []  # still blocked on the first event while the job finished
        release.set()
        assert eventually(lambda: "JobCompleted" in got, timeout=10)
    assert got[-1] == "JobCompleted"
    assert pipeline.event_stats().failed == 0


def test_a_raising_callback_is_logged_once_and_breaks_nothing(
    sim: SimServer, make_settings: Any, make_job: Any, log_lines: list[str]
) -> None:
    """Every call raises: the job succeeds with all its documents, one error line names the
    callback, the failures are counted, and other jobs' callbacks are unaffected."""
    calls: list[str] = []
    good: list[str] = []

    def broken(event: events.Event) -> None:
        calls.append(event.type)
        raise ValueError("boom in the callback")

    with briefd.Pipeline(make_settings()) as pipeline:
        bad = pipeline.submit(make_job("cb-bad"), on_event=broken)
        fine = pipeline.submit(make_job("cb-good"), on_event=lambda e: good.append(e.type))
        assert bad.get(timeout=30).status is JobStatus.SUCCEEDED
        assert fine.get(timeout=30).status is JobStatus.SUCCEEDED
    assert calls[-1] == "JobCompleted" and good[-1] == "JobCompleted"
    assert pipeline.event_stats().failed == len(calls) > 1
    raised = [line for line in log_lines if "boom in the callback" in line and "raised" in line]
    assert len(raised) == 1, raised
    assert "broken" in raised[0]


def _progress(job: str, stage: str, fraction: float, attempt: int = 1) -> events.StageProgress:
    return events.StageProgress(
        job_id=job, stage=stage, attempt=attempt, completion_tokens=1, fraction=fraction
    )


def test_waiting_progress_merges_and_a_full_queue_drops_but_keeps_job_completed() -> None:
    """Held callback: 50 StageProgress for one stage wait as one (the newest); past the
    queue's size other events are dropped and counted; JobCompleted still gets through."""
    hold = threading.Event()
    got: list[events.Event] = []

    def slow(event: events.Event) -> None:
        hold.wait(30)
        got.append(event)

    d = EventDispatcher(maxsize=4)
    d.put(slow, _started())
    assert eventually(lambda: d.stats().waiting == 0, timeout=5)  # taken: slow holds it
    for i in range(50):
        d.put(slow, _progress("j", "PLAYS_MD", i / 100))
    d.put(slow, _progress("j", "PLAYS_MD", 0.9, attempt=2))  # another attempt: its own slot
    for stage in STAGES[:3]:
        d.put(slow, events.StageStarted(job_id="j", stage=stage, attempt=1))
    result = JobRun(job=_spec()).never_ran(_pipeline(), "test")
    d.put(slow, events.JobCompleted(job_id="j", result=result))
    stats = d.stats()
    assert stats.merged == 49 and stats.waiting == 5 and stats.dropped == 1, stats
    hold.set()
    assert d.flush(10)
    d.close(1)
    kinds = [(e.type, getattr(e, "fraction", None)) for e in got]
    assert kinds == [
        ("JobStarted", None),
        ("StageProgress", 0.49),
        ("StageProgress", 0.9),
        ("StageStarted", None),
        ("StageStarted", None),
        ("JobCompleted", None),
    ]
    assert d.stats().delivered == 6


def _spec() -> briefd.JobSpec:
    return briefd.JobSpec(
        job_id="j",
        prompts={s: "p" for s in STAGES},
        procurement_metrics={},
    )


def _pipeline() -> briefd.PipelineSpec:
    return briefd.load_pipeline(None)


def test_events_after_close_are_ignored_and_close_does_not_wait_for_a_hung_callback() -> None:
    """A callback that never returns: close gives up after its timeout; later events are
    ignored rather than queued for a thread that has stopped."""
    never = threading.Event()
    d = EventDispatcher()
    d.put(lambda e: never.wait(30), _started())
    assert not d.flush(0.2)
    d.close(0.2)
    d.put(lambda e: None, _started())
    assert d.stats().waiting == 0
    never.set()


def test_readme_progress_bar_example_runs(
    sim: SimServer, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's ``on_event`` example, as printed, against the simulator: every stage's
    bar is created from its StageStarted and completed by its end."""
    readme = (repo / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Live progress: `on_event`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    assert len(code.group(1).splitlines()) <= 15
    monkeypatch.chdir(repo)
    for key in [k for k in os.environ if k.startswith("BRIEFD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BRIEFD_BASE_URL", sim.base_url)
    scope: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)
    assert scope["result"].status is JobStatus.SUCCEEDED
    bars = scope["bars"]
    assert set(scope["tasks"]) == set(STAGES)
    assert all(bars.tasks[t].completed == 1.0 for t in scope["tasks"].values())


def _started() -> events.JobStarted:
    return events.JobStarted(job_id="j", stages=list(STAGES), parallel=True, max_concurrent=2)
