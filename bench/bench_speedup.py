"""Is the reported speed-up true? The result's ``speedup_ratio`` against the measured one.

The example job (``examples/northwind-briefing.json``) on the simulator in a child
process, in two server modes:

* ``parallel``: the server works on every request at once (a provider, vLLM,
  llama.cpp's server with slots);
* ``serializing``: one request at a time, the others waiting inside their calls
  (llama-cpp-python's server), with llama.cpp's ``timings`` in each answer.

In each mode the job runs with ``BRIEFD_PARALLEL=true`` and ``false``, interleaved
round by round so that the machine's drift hits both alike. The *measured*
speed-up is the median sequential wall time over the median parallel one; the
*reported* one is the median of the parallel runs' ``speedup_ratio`` (sum of the
stages' call times / the job's wall time, issue 19). Target: they agree within
10 % in both modes; the serializing server's is about 1.0 (it reads ~1.5 when
stage times are wall times: printed too, as "by wall times"). Load is reported.

Then ``--jobs`` jobs at once at K=2 on the parallel simulator (issue 21): per stage
the p50/p95 of call time, time to first token (streamed calls) and queue time, as
the metrics actor keeps them, against the wall time the old figure showed::

    python bench/bench_speedup.py [--scale 0.05] [--rounds 7] [--jobs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from common import start_sim
from loguru import logger

import briefd

EXAMPLE = Path(__file__).resolve().parent.parent / "examples/northwind-briefing.json"


def _job(job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    job["job_id"] = job_id
    return job


def _run(base_url: str, parallel: bool, job_id: str) -> tuple[int, float, float]:
    """(wall ms, reported speed-up, speed-up by wall times) of one run of the example job."""
    settings = briefd.Settings(base_url=base_url, parallel=parallel, timeout_ms=120_000)
    result = briefd.run(_job(job_id), settings)
    assert result.status == "succeeded", result.errors
    m = result.metrics
    by_wall = sum(m.wall_ms.values()) / m.total_ms if m.total_ms else 0.0
    return m.total_ms, m.speedup_ratio, by_wall


def _mode(name: str, flags: list[str], scale: float, rounds: int) -> dict[str, float]:
    child, url = start_sim(scale, *flags)
    try:
        _run(url, True, f"{name}-warm")  # connections, imports: not in the figures
        par: list[tuple[int, float, float]] = []
        seq: list[tuple[int, float, float]] = []
        for i in range(rounds):  # interleaved; which goes first alternates
            order = (True, False) if i % 2 == 0 else (False, True)
            for parallel in order:
                (par if parallel else seq).append(
                    _run(url, parallel, f"{name}-{'p' if parallel else 's'}{i}")
                )
    finally:
        child.terminate()
        child.wait(timeout=10)
    par_ms = statistics.median(t for t, _, _ in par)
    seq_ms = statistics.median(t for t, _, _ in seq)
    measured = seq_ms / par_ms
    reported = statistics.median(r for _, r, _ in par)
    return {
        "par_ms": par_ms,
        "seq_ms": seq_ms,
        "measured": measured,
        "reported": reported,
        "by_wall": statistics.median(w for _, _, w in par),
        "seq_reported": statistics.median(r for _, r, _ in seq),
        "error": reported / measured - 1,
    }


def _split(scale: float, jobs: int) -> None:
    """``jobs`` jobs at once, K=2: where each stage's time went (p50/p95 ms)."""
    child, url = start_sim(scale)
    try:
        settings = briefd.Settings(base_url=url, max_concurrent=2, timeout_ms=600_000)
        with briefd.Pipeline(settings) as pipeline:
            futures = [pipeline.submit(_job(f"split-{i}")) for i in range(jobs)]
            results = [f.get(timeout=3600) for f in futures]
            snap = pipeline.metrics()
    finally:
        child.terminate()
        child.wait(timeout=10)
    ok = sum(r.status == "succeeded" for r in results)
    print(f"\n{jobs} jobs at once, K=2, parallel simulator ({ok} succeeded): p50/p95 ms per stage")
    print(f"{'stage':<18} {'wall':>13} {'call':>11} {'ttft':>11} {'queued':>13}")

    def cell(s: Any) -> str:
        return f"{s.p50_ms:.0f}/{s.p95_ms:.0f}" if s is not None and s.count else "-"

    for stage in sorted(snap.stage_latency):
        print(
            f"{stage:<18} {cell(snap.stage_latency[stage]):>13} "
            f"{cell(snap.clocks['call'].get(stage)):>11} "
            f"{cell(snap.clocks['ttft'].get(stage)):>11} "
            f"{cell(snap.clocks['queued'].get(stage)):>13}"
        )
    print("wall = the stage's start to end (the old figure); call = its calls; queued = its wait")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="seconds per latency unit")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=100, help="jobs at once for the split")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING", diagnose=False)
    load_before = os.getloadavg()
    modes = {
        "parallel": _mode("parallel", [], args.scale, args.rounds),
        "serializing": _mode("serializing", ["--serialize"], args.scale, args.rounds),
    }
    load_after = os.getloadavg()
    print(
        f"example job, simulator at {args.scale} s/unit (stages 7/7/5/6 units), "
        f"{args.rounds} interleaved rounds, medians; {os.cpu_count()} CPUs, load (1/5/15 min) "
        f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, "
        f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after"
    )
    print(
        f"{'server':<12} {'parallel ms':>11} {'sequential ms':>13} {'measured':>9} "
        f"{'reported':>9} {'by wall':>8} {'seq rep.':>8} {'error':>7}"
    )
    ok = True
    for name, f in modes.items():
        within = abs(f["error"]) <= 0.10
        ok = ok and within
        print(
            f"{name:<12} {f['par_ms']:>11.0f} {f['seq_ms']:>13.0f} {f['measured']:>8.2f}x "
            f"{f['reported']:>8.2f}x {f['by_wall']:>7.2f}x {f['seq_reported']:>7.2f}x "
            f"{f['error']:>+7.1%} {'ok' if within else 'OFF TARGET'}"
        )
    print(
        "measured = sequential / parallel wall time; reported = the parallel runs' "
        "speedup_ratio (call time / wall); by wall = what the wall-time figure said; "
        "seq rep. = speedup_ratio of the sequential runs (1.0 if true). Target: |error| <= 10 %."
    )
    if args.jobs > 0:
        _split(args.scale, args.jobs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
