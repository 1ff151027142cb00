"""Does an ``on_event`` callback cost a job time? A job's wall time with none, a slow and a
raising callback, in interleaved rounds on one Pipeline, medians and the load printed.

The callbacks run on the pipeline's dispatcher thread (:mod:`briefd.dispatch`), so the
slow one (``--slow-ms`` per event) should leave the job's time where it is and fall behind
instead (``waiting`` in the dispatcher's figures), and the raising one should cost nothing
but a counter:

    python bench/bench_callbacks.py [--rounds 9] [--scale 0.02] [--slow-ms 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from common import job, start_sim

import briefd
from briefd import events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--slow-ms", type=float, default=50.0)
    args = ap.parse_args()
    pause = threading.Event()

    def slow(event: events.Event) -> None:
        pause.wait(args.slow_ms / 1000)

    def raising(event: events.Event) -> None:
        raise RuntimeError("a broken callback")

    kinds: dict[str, Callable[[events.Event], None] | None] = {
        "none": None,
        "slow": slow,
        "raising": raising,
    }
    sim, url = start_sim(args.scale)
    try:
        times: dict[str, list[float]] = {name: [] for name in kinds}
        with briefd.Pipeline(briefd.Settings(base_url=url)) as pipeline:
            for r in range(args.rounds):
                for name, callback in kinds.items():
                    started = time.perf_counter()
                    future: Any = pipeline.submit(job(f"{name}-{r}"), on_event=callback)
                    future.get(timeout=120)
                    times[name].append((time.perf_counter() - started) * 1000)
            stats = pipeline.event_stats()
        for name, values in times.items():
            print(f"{name:8s} median {statistics.median(values):7.1f} ms  (n={len(values)})")
        print(f"dispatcher: {stats}")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    finally:
        sim.terminate()
        sim.wait(10)


if __name__ == "__main__":
    main()
