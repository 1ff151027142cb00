"""What the benchmarks share: the simulator in a child process, and a job for it.

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
import threading
import time
from collections.abc import Iterator
from typing import Any

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
