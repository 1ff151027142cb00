"""What 1,000 jobs submitted at once cost one in-process Pipeline: threads and memory.

The simulator runs in a child process (``python -m briefd sim``) so that its
threads and memory are not counted. Prints the thread count and RSS before
submitting, right after submitting (the queue holds nearly all of them as
data), the peak while they run, and after all have completed:

    python bench/bench_admission.py [--jobs 1000] [--window N] [--tokens 16] [--scale 0.01]
"""

from __future__ import annotations

import argparse
import threading
import time

from common import job, start_sim

import briefd
from briefd.messages import Event, JobCompleted


def rss_mib() -> float:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000)
    ap.add_argument("--window", type=int, default=None, help="max_active_jobs (unset: auto)")
    ap.add_argument("--tokens", type=int, default=16, help="max_concurrent")
    ap.add_argument("--scale", type=float, default=0.01)
    args = ap.parse_args()
    sim, url = start_sim(args.scale)
    try:
        settings = briefd.Settings(
            base_url=url, max_active_jobs=args.window, max_concurrent=args.tokens
        )
        with briefd.Pipeline(settings) as pipeline:
            threads0, rss0 = threading.active_count(), rss_mib()
            started = time.perf_counter()
            left = [args.jobs]
            lock, done = threading.Lock(), threading.Event()

            def finished(event: Event) -> None:  # an observer: the job's JobCompleted
                if not isinstance(event, JobCompleted):
                    return
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

            futures = [
                pipeline.submit(job(f"adm-{i}"), observers=[finished]) for i in range(args.jobs)
            ]
            submit_s = time.perf_counter() - started
            threads1, rss1 = threading.active_count(), rss_mib()
            peak_threads, peak_rss = threads1, rss1
            while not done.wait(0.05):  # sample until every future has resolved
                peak_threads = max(peak_threads, threading.active_count())
                peak_rss = max(peak_rss, rss_mib())
            assert all(f.get(timeout=60).status == "succeeded" for f in futures)
            total_s = time.perf_counter() - started
            threads2, rss2 = threading.active_count(), rss_mib()
            close_started = time.perf_counter()
        close_s = time.perf_counter() - close_started
    finally:
        sim.terminate()
        sim.wait(10)
    print(f"jobs {args.jobs}, active window {settings.active_jobs}, tokens {args.tokens}")
    print(f"before submit : {threads0:5d} threads  {rss0:7.1f} MiB RSS")
    print(
        f"after submit  : {threads1:5d} threads  {rss1:7.1f} MiB RSS  "
        f"(+{rss1 - rss0:.1f} MiB, submit took {submit_s * 1000:.0f} ms)"
    )
    print(
        f"peak running  : {peak_threads:5d} threads  {peak_rss:7.1f} MiB RSS  "
        f"(+{peak_rss - rss0:.1f} MiB)"
    )
    print(f"all completed : {threads2:5d} threads  {rss2:7.1f} MiB RSS  in {total_s:.1f} s")
    print(f"close()       : {close_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
