"""Where briefd's own CPU goes at 100 jobs K=16, logging configured as the CLI does.

Every thread is profiled (cProfile with thread CPU time, one profiler per
thread, merged); the simulator runs in a child process so its threads are not
in the figures. Prints the top entries by own time and the share of profiled
CPU inside event publication and inside loguru:

    python bench/profile_hot_path.py [--jobs 100] [--tokens 16] [--scale 0.01] [--log-file F]
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import re
import time

from common import job, merged, profile_all_threads, start_sim

import briefd
from briefd.ops import events
from briefd.ops.logs import setup_logging


def _share(stats: pstats.Stats, total: float, pattern: str) -> float:
    """The largest inclusive time of a function matching ``pattern``, as a share of total."""
    best = 0.0
    for (file, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if re.search(pattern, f"{file}:{name}"):
            best = max(best, row[3])
    return best / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--log-file", default=None, help="also the DEBUG JSON file sink")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--eager", action="store_true", help="build every event's log record (the old publish)"
    )
    args = ap.parse_args()
    if args.eager:
        events._logged = lambda level: True
    sim, url = start_sim(args.scale)
    settings = briefd.Settings(
        base_url=url, max_concurrent=args.tokens, log_format="json", log_file=args.log_file
    )
    setup_logging(settings, stream=open(os.devnull, "w"))  # noqa: SIM115 (process-long)
    try:
        with profile_all_threads() as profilers:
            started = time.perf_counter()
            with briefd.Pipeline(settings) as pipeline:
                futures = [pipeline.submit(job(f"prof-{i}")) for i in range(args.jobs)]
                assert all(f.get(timeout=600).status == "succeeded" for f in futures)
            makespan = time.perf_counter() - started
    finally:
        sim.terminate()
        sim.wait(10)
    stats = merged(profilers, stream=io.StringIO())
    if os.environ.get("BRIEFD_PROFILE_DUMP"):
        stats.dump_stats(os.environ["BRIEFD_PROFILE_DUMP"])
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"{args.jobs} jobs K={args.tokens}: makespan {makespan:.2f}s, profiled CPU {total:.2f}s")
    for label, pattern in (
        ("publish (inclusive)", r"ops/events.py:publish$"),
        ("loguru Logger._log (inclusive)", r"loguru/_logger.py:_log$"),
        ("loguru Handler.emit (inclusive)", r"loguru/_handler.py:emit$"),
    ):
        print(f"  in {label:<32}: {_share(stats, total, pattern):.1%}")
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()
