"""Latency of the default pipeline: parallel against sequential, side by side in one run.

Runs the seed's latency profile (7/7/5/6 units, scaled) on the simulated
server and prints ratios, which survive a noisy 2-core machine better than
absolute times:

    python bench/bench_pipeline.py [--scale 0.05] [--repeat 3] [--jobs 8]

Figures: one job's total against the DAG's critical path (7+5+6 = 18 units)
and the sum (25 units); the parallel/sequential ratio; and throughput of
many jobs sharing the two tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from loguru import logger

import briefd
from briefd.sim.server import SimProfile, SimServer

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


def _job(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "prompts": {s: f"Write {s} for the Northwind account." for s in STAGES},
        "procurement_metrics": {"summary": "crm", "vendors": []},
    }


def _one_job_ms(settings: briefd.Settings, job_id: str) -> tuple[int, float, int]:
    result = briefd.run(_job(job_id), settings)
    assert result.status == "succeeded", result.errors
    m = result.metrics
    return m.total_ms, m.speedup_ratio, m.parallel_group_ms


def _many_jobs_s(settings: briefd.Settings, jobs: int, tag: str) -> float:
    started = time.perf_counter()
    with briefd.Pipeline(settings) as pipeline:
        futures = [pipeline.submit(_job(f"{tag}-{i}")) for i in range(jobs)]
        for f in futures:
            assert f.get(timeout=600).status == "succeeded"
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="seconds per latency unit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING", diagnose=False)

    unit_ms = args.scale * 1000
    with SimServer(SimProfile(scale=args.scale)) as sim:
        base = {"base_url": sim.base_url, "max_concurrent": 2}
        par_s, seq_s = briefd.Settings(**base), briefd.Settings(**base, parallel=False)
        par, seq = [], []
        for i in range(args.repeat):  # interleaved, so drift hits both alike
            par.append(_one_job_ms(par_s, f"p{i}"))
            seq.append(_one_job_ms(seq_s, f"s{i}"))
        par_ms = statistics.median(t for t, _, _ in par)
        seq_ms = statistics.median(t for t, _, _ in seq)
        par_group = statistics.median(g for _, _, g in par)
        seq_group = statistics.median(g for _, _, g in seq)
        print(f"one job, scale {args.scale}s/unit, median of {args.repeat}")
        print(f"  parallel   {par_ms:8.0f} ms = {par_ms / unit_ms:5.2f} units (critical path 18)")
        print(f"  sequential {seq_ms:8.0f} ms = {seq_ms / unit_ms:5.2f} units (sum 25)")
        print(f"  parallel overhead over the critical path: {par_ms - 18 * unit_ms:+.0f} ms")
        print(
            f"  whole-job latency reduction: {1 - par_ms / seq_ms:.1%} (DAG bound: 1-18/25 = 28%)"
        )
        print(
            f"  briefing+plays group: {par_group:.0f} ms vs {seq_group:.0f} ms, "
            f"reduction {1 - par_group / seq_group:.1%} (seed target >= 40%)"
        )
        print(f"  speedup_ratio reported: {statistics.median(r for _, r, _ in par):.2f}x")

        many_par = _many_jobs_s(par_s, args.jobs, "mp")
        many_seq = _many_jobs_s(seq_s, args.jobs, "ms")
        print(f"{args.jobs} jobs sharing 2 tokens")
        print(
            f"  parallel {many_par:6.2f} s, sequential stages {many_seq:6.2f} s, "
            f"ratio {many_seq / many_par:.2f}x; server peak in flight {sim.stats().max_in_flight}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
