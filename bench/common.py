"""What the benchmarks share: the simulator in a child process, a job for it, jobs run through
one ``briefd.Pipeline`` and timed, a throwaway PostgreSQL, and a profiler of every thread.

The simulator runs in its own process so that its CPU time is not counted as
the client's (the benchmarks compare client CPU per call against a reference).
Run the benchmarks as scripts (``python bench/NAME.py``): this folder is then
on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import briefd
from briefd.messages import Event, JobCompleted

ROOT = Path(__file__).resolve().parent.parent

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


def job(job_id: str) -> dict[str, Any]:
    """A job for the built-in pipeline, one short prompt per stage."""
    return {
        "job_id": job_id,
        "prompts": {s: f"Write {s} for the Northwind account." for s in STAGES},
        "procurement_metrics": {"summary": "crm", "vendors": []},
    }


def start_sim(scale: float, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``briefd sim`` in a child process (``extra``: more of its flags), and its base URL from
    the line it prints."""
    child = subprocess.Popen(
        [sys.executable, "-m", "briefd", "sim", "--port", "0", "--scale", str(scale), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if "listening on" not in line:
        child.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return child, line.rsplit(" ", 1)[1].strip()


def run_jobs(
    base_url: str, jobs: int, k: int, tag: str, gap_s: float = 0.0, **settings: Any
) -> tuple[float, list[float], float]:
    """(makespan s, job latencies s, client CPU s) of ``jobs`` jobs through one
    ``briefd.Pipeline`` with K tokens (``settings``: more of its settings), submitted
    ``gap_s`` apart (0: all at once); fails unless every job succeeded."""
    done: dict[str, float] = {}
    lock = threading.Lock()

    def observe(event: Event) -> None:
        if isinstance(event, JobCompleted):
            with lock:
                done[event.job_id] = time.perf_counter()

    config = briefd.Settings(base_url=base_url, max_concurrent=k, **settings)
    with briefd.Pipeline(config) as pipeline:
        cpu0, t0 = time.process_time(), time.perf_counter()
        submitted: dict[str, float] = {}
        futures = []
        for i in range(jobs):
            job_id = f"{tag}-{i}"
            submitted[job_id] = time.perf_counter()
            futures.append(pipeline.submit(job(job_id), observers=[observe]))
            if gap_s:
                time.sleep(gap_s)  # open-loop arrivals (a benchmark's load, not a test's wait)
        results = [f.get(timeout=600) for f in futures]
        makespan, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert all(r.status == "succeeded" for r in results), [r.errors for r in results][:3]
    return makespan, [done[j] - submitted[j] for j in submitted], cpu


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[Any]:
    """A PostgreSQL server of its own (``tests/pg.py``: Debian's binaries) in a temporary
    folder, stopped after; ``.admin(sql)`` and ``.url(database)`` reach it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pg import PgServer, server_bindir, server_user

    server = PgServer(
        server_bindir(), Path(tempfile.mkdtemp(prefix="briefd-pg-", dir="/tmp")), server_user()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def database_url(url: str | None, name: str = "bench") -> Iterator[str]:
    """``url`` as given, or (None) database ``name`` on a throwaway server stopped after."""
    if url is not None:
        yield url
        return
    with throwaway_postgres() as server:
        server.admin(f'CREATE DATABASE "{name}"')
        yield server.url(name)


@contextlib.contextmanager
def profile_all_threads() -> Iterator[list[cProfile.Profile]]:
    """cProfile every thread started inside the block (actors are threads), CPU time each.

    cProfile sees only the thread that enables it, so each new thread enables a
    profiler of its own (``threading.setprofile``); :func:`merged` adds them up.
    """
    profilers = [cProfile.Profile(time.thread_time)]

    def start(*_: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start)
    profilers[0].enable()
    try:
        yield profilers
    finally:
        profilers[0].disable()
        threading.setprofile(None)


def merged(profilers: list[cProfile.Profile], **kwargs: Any) -> pstats.Stats:
    """One ``pstats.Stats`` of every thread's profile."""
    stats = pstats.Stats(profilers[0], **kwargs)
    for profiler in profilers[1:]:
        stats.add(profiler)
    return stats
