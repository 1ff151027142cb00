"""The in-process Pipeline's active window: at most ``max_active_jobs`` coordinators, the
rest wait as data; a queued job cancelled never reaches the server; close() is quick."""

from __future__ import annotations

import threading
import time
from typing import Any

import briefd
from briefd.messages import ErrorCode, Event, JobCompleted, JobStatus, StageStarted
from briefd.sim.server import Fault, SimServer

WINDOW = 8


class PeakThreads:
    """Samples ``threading.active_count()`` from its own thread (waiting on an Event with a
    timeout, never sleeping) and from every event a job publishes."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-threads", daemon=True)

    def sample(self, event: Event | None = None) -> None:
        self.peak = max(self.peak, threading.active_count())

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            self.sample()

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def test_1000_jobs_wait_as_data_and_all_complete(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """1,000 jobs at once: the thread count stays far below a thread set per job (about five
    each, 5,000 here), and every job still completes."""
    sim.set_scale(0.002)  # 14/14/10/12 ms a stage: the test is about threads, not latency
    baseline = threading.active_count()
    settings = make_settings(max_active_jobs=WINDOW, max_concurrent=16)
    with briefd.Pipeline(settings) as pipeline, PeakThreads() as peak:
        futures = [
            pipeline.submit(make_job(f"bulk-{i}"), observers=[peak.sample]) for i in range(1_000)
        ]
        peak.sample()
        results = [f.get(timeout=300) for f in futures]
    assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 1_000
    assert peak.peak < 200, (baseline, peak.peak)
    # The window bounds it, not luck: the window's actors (a coordinator and 4 stages a job,
    # twice over for jobs still stopping as the next start), the sim's connections, a few more.
    assert peak.peak - baseline <= 2 * WINDOW * 5 + 16 + 10, (baseline, peak.peak)
    assert sim.stats().total_requests >= 4_000


def test_at_most_max_active_jobs_run_at_once(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Jobs start in submission order, never more than the window at once."""
    running: set[str] = set()
    most = 0
    order: list[str] = []
    lock = threading.Lock()

    def watch(event: Event) -> None:
        nonlocal most
        with lock:
            match event:
                case StageStarted(job_id=job) if job not in running and job not in order:
                    running.add(job)
                    order.append(job)
                    most = max(most, len(running))
                case JobCompleted(job_id=job):
                    running.discard(job)

    with briefd.Pipeline(make_settings(max_active_jobs=3, max_concurrent=8)) as pipeline:
        futures = [pipeline.submit(make_job(f"w-{i}"), observers=[watch]) for i in range(12)]
        assert all(f.get(timeout=60).status is JobStatus.SUCCEEDED for f in futures)
    assert most <= 3
    assert set(order) == {f"w-{i}" for i in range(12)}
    # FIFO through a window of three: the first three admitted start first (in any order:
    # they run side by side), and no job starts three or more places from its turn.
    assert set(order[:3]) == {"w-0", "w-1", "w-2"}
    assert all(abs(order.index(f"w-{i}") - i) < 3 for i in range(12)), order


def test_a_queued_job_cancelled_never_reaches_the_server(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    sim.inject(Fault(stage="BRIEFING_MD", job_id="blocker", delay_s=0.3))
    heard: list[Event] = []
    with briefd.Pipeline(make_settings(max_active_jobs=1)) as pipeline:
        first = pipeline.submit(make_job("blocker"))
        queued = pipeline.submit(make_job("waiting"), observers=[heard.append])
        assert pipeline.cancel("waiting", reason="changed my mind")
        result = queued.get(timeout=1)  # at once: it does not wait for the blocker
        assert not pipeline.cancel("waiting")  # gone once ended
        assert first.get(timeout=30).status is JobStatus.SUCCEEDED
    assert result.status is JobStatus.CANCELLED
    assert {e.code for e in result.errors} == {ErrorCode.CANCELLED}
    assert {e.stage for e in result.errors} == set(result.documents)
    assert all(doc is None for doc in result.documents.values())
    assert [type(e) for e in heard] == [JobCompleted]  # resolved once, published once
    assert "waiting" not in sim.stats().by_job_stage
    assert "blocker" in sim.stats().by_job_stage


def test_close_cancels_queued_and_running_jobs_quickly(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    sim.inject(Fault(stage="BRIEFING_MD", delay_s=5.0, times=None))
    pipeline = briefd.Pipeline(make_settings(max_active_jobs=4, timeout_ms=30_000)).start()
    futures = [pipeline.submit(make_job(f"c-{i}")) for i in range(200)]
    assert sim.wait_for_in_flight(2, timeout=10)  # both tokens held, the rest waiting
    started = time.monotonic()
    pipeline.close()
    took = time.monotonic() - started
    results = [f.get(timeout=1) for f in futures]
    assert took < 3.0, took
    assert {r.status for r in results} == {JobStatus.CANCELLED}
    assert len({r.job_id for r in results}) == 200
    assert len(sim.stats().by_job_stage) <= 4  # the queued 196 never called


def test_another_tenants_job_is_not_held_behind_a_full_window(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Tenant a fills the window and queues 50 more; tenant b's one job starts before any of
    a's queued ones (a tenant with nothing running is admitted past the window)."""
    started: list[str] = []
    lock = threading.Lock()

    def seen(event: Event) -> None:
        if isinstance(event, StageStarted):
            with lock:
                if event.job_id not in started:
                    started.append(event.job_id)

    settings = make_settings(max_active_jobs=2, max_concurrent=2)
    with briefd.Pipeline(settings, observers=[seen]) as pipeline:
        a = [pipeline.submit(make_job(f"a.a-{i}", tenant="a")) for i in range(52)]
        b = pipeline.submit(make_job("b.b-0", tenant="b"))
        assert b.get(timeout=120).status == JobStatus.SUCCEEDED
        for f in a[:4]:
            f.get(timeout=120)
    with lock:
        assert started.index("b.b-0") <= 2, started[:6]  # after the two a's already running
