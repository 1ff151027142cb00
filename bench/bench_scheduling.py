"""Scheduling against a lean reference: briefd's actors beside plain threads + ``requests``.

The reference is the least a scheduler could be: a semaphore of K, one thread
per stage that waits for its dependencies' events (BRIEFING+PLAYS ->
PROCUREMENT -> ANNEX), then for the semaphore (FIFO, as Python's is), and one
shared ``requests.Session`` whose pool keeps K connections. briefd has to beat
it (on latency, by serving the longest remaining path first) or match it (on
makespan and CPU) to be worth its machinery.

    python bench/bench_scheduling.py [--rounds 5] [--scale 0.01] [--profile out.prof]

The simulator runs in a child process (``python -m briefd sim``), so this
process's CPU time (``time.process_time()``) is the client's alone. Both
variants run in the same round, in alternating order, against the same
simulator; figures are medians over rounds, and ratios are what to read on a
noisy 2-core machine. The targets are printed beside the figures, not enforced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from common import STAGES, merged, profile_all_threads, run_jobs, start_sim
from loguru import logger

import briefd
from briefd.config import load_pipeline
from briefd.llm.call import build_request

DEPS: dict[str, tuple[str, ...]] = {
    "BRIEFING_MD": (),
    "PLAYS_MD": (),
    "PROCUREMENT_JSON": ("BRIEFING_MD", "PLAYS_MD"),
    "ANNEX_JSON": ("PROCUREMENT_JSON",),
}
SCENARIOS = ((1, 2), (100, 2), (100, 16))  # (jobs, K)
LB_UNITS = 18  # the critical path, 7 + 5 + 6 units


@dataclass
class Run:
    """One variant's run of one scenario."""

    makespan_s: float
    latencies_s: list[float]
    cpu_s: float
    calls: int


def run_briefd(base_url: str, jobs: int, k: int, tag: str) -> Run:
    """``jobs`` jobs through one ``briefd.Pipeline`` with K tokens."""
    makespan, latencies, cpu = run_jobs(base_url, jobs, k, tag, stream=False)
    return Run(makespan, latencies, cpu, 4 * jobs)


def run_reference(base_url: str, jobs: int, k: int, tag: str) -> Run:
    """The same jobs on plain threads, a FIFO semaphore of K and one pooled Session."""
    pipeline = load_pipeline(None).by_name
    settings = briefd.Settings(base_url=base_url, stream=False)  # whole answers, as briefd here
    url = base_url.rstrip("/") + "/chat/completions"
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=k))
    gate = threading.Semaphore(k)
    submitted: dict[str, float] = {}
    done: dict[str, float] = {}
    failures: list[str] = []

    def stage(job_id: str, name: str, events: dict[str, threading.Event]) -> None:
        for dep in DEPS[name]:
            events[dep].wait()
        body = build_request(pipeline[name], f"Write {name} for the Northwind account.", settings)
        headers = {"X-Briefd-Job": job_id, "X-Briefd-Stage": name}
        try:
            with gate:
                resp = session.post(url, json=body, headers=headers, timeout=60)
            if resp.status_code != 200 or not resp.json()["choices"][0]["message"]["content"]:
                failures.append(f"{job_id} {name}: {resp.status_code}")
        finally:
            events[name].set()
            if name == "ANNEX_JSON":
                done[job_id] = time.perf_counter()

    threads: list[threading.Thread] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(jobs):
        job_id = f"{tag}-{i}"
        events = {name: threading.Event() for name in STAGES}
        submitted[job_id] = time.perf_counter()
        for name in STAGES:
            thread = threading.Thread(target=stage, args=(job_id, name, events), daemon=True)
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join()
    makespan, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    session.close()
    assert not failures, failures[:3]
    return Run(makespan, [done[j] - submitted[j] for j in submitted], cpu, 4 * jobs)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _med(runs: list[Run], figure: Callable[[Run], float]) -> float:
    return statistics.median(figure(r) for r in runs)


def _report(jobs: int, k: int, scale: float, ours: list[Run], ref: list[Run]) -> None:
    mk, mk_ref = _med(ours, lambda r: r.makespan_s), _med(ref, lambda r: r.makespan_s)
    mean, mean_ref = (_med(x, lambda r: statistics.fmean(r.latencies_s)) for x in (ours, ref))
    p95, p95_ref = (_med(x, lambda r: _p95(r.latencies_s)) for x in (ours, ref))
    cpu, cpu_ref = (_med(x, lambda r: r.cpu_s / r.calls * 1000) for x in (ours, ref))
    jobs_lb = max(LB_UNITS, jobs * 25 / k) * scale  # the DAG, or the work (25 units a job) / K
    print(f"{jobs} job{'s' if jobs > 1 else ''}, K={k}  (LB {jobs_lb * 1000:.0f} ms)")
    print(f"  makespan    briefd {mk * 1000:8.0f} ms   reference {mk_ref * 1000:8.0f} ms")
    print(
        f"    / LB      briefd {mk / jobs_lb:8.3f}      reference {mk_ref / jobs_lb:8.3f}"
        f"      briefd/reference {mk / mk_ref:.3f}  (target <= 1.02)"
    )
    target = "  (target <= 0.6 at 100 jobs K=2)" if (jobs, k) == (100, 2) else ""
    print(
        f"  latency mean briefd {mean * 1000:7.0f} ms   reference {mean_ref * 1000:8.0f} ms"
        f"   ratio {mean / mean_ref:.3f}{target}"
    )
    if jobs > 1:
        # Oldest first at best ends one job every makespan/N: job i at i x makespan/N, a mean
        # of (N+1)/2N x makespan. What no order can beat at a given makespan.
        floor = (jobs + 1) / (2 * jobs)
        print(
            f"    floor (jobs ending evenly, oldest first): ratio {floor * mk / mean_ref:.3f} at"
            f" briefd's makespan, {floor * mk_ref / mean_ref:.3f} at the reference's"
        )
    print(
        f"  latency p95 briefd {p95 * 1000:8.0f} ms   reference {p95_ref * 1000:8.0f} ms"
        f"   ratio {p95 / p95_ref:.3f}"
    )
    print(
        f"  CPU/call    briefd {cpu:8.2f} ms   reference {cpu_ref:8.2f} ms"
        f"   ratio {cpu / cpu_ref:.3f}  (target <= 1.25)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=0.01, help="seconds per latency unit")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="instead: cProfile briefd at 100 jobs K=16 once, print the top of briefd's code",
    )
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING", diagnose=False)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}; cores {os.cpu_count()}")
    child, base_url = start_sim(args.scale)
    try:
        run_briefd(base_url, 4, 2, "warm")  # imports, first connections
        run_reference(base_url, 4, 2, "warm")
        if args.profile:
            _profile(base_url, args.profile)
            return 0
        lb_s = LB_UNITS * args.scale
        print(f"scale {args.scale}s/unit: stages 70/70/50/60 ms; LB {lb_s * 1000:.0f} ms per job")
        print(f"medians over {args.rounds} rounds, variants interleaved (order alternating)\n")
        for jobs, k in SCENARIOS:
            ours: list[Run] = []
            ref: list[Run] = []
            for r in range(args.rounds):
                tag = f"j{jobs}k{k}r{r}"
                pair = [(ours, run_briefd), (ref, run_reference)]
                for runs, variant in pair if r % 2 == 0 else pair[::-1]:
                    runs.append(variant(base_url, jobs, k, tag))
            _report(jobs, k, args.scale, ours, ref)
    finally:
        child.terminate()
        child.wait(timeout=10)
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return 0


def _profile(base_url: str, out: str) -> None:
    """One briefd run at 100 jobs K=16 under cProfile, every thread (actors are threads).

    (:func:`common.profile_all_threads`)
    """
    with profile_all_threads() as profilers:
        run = run_briefd(base_url, 100, 16, "prof")
    cpu_ms = run.cpu_s / run.calls * 1000
    print(f"profiled: makespan {run.makespan_s:.2f}s, CPU/call {cpu_ms:.2f} ms (profiler on)")
    stats = merged(profilers)
    stats.dump_stats(out)
    stats.sort_stats("cumulative").print_stats(r"briefd/|actors/|config/|messages/", 25)
    stats.sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    raise SystemExit(main())
