"""Failover: a dead endpoint first in the alias must not slow jobs once its breaker is open.

Two simulators in child processes play two providers. Endpoint A answers 503 to
every call (``briefd sim --fail-status 503``); B works. Variant ``failover`` runs
jobs with alias ``[A, B]``; variant ``b-alone`` runs them with alias ``[B]``.
Each round first runs one job that opens A's breaker (its cost is what failover
pays once), then ``--jobs`` jobs whose latency is measured. Rounds interleave the
two variants; medians are printed with the load.

Target (issue 17): every job succeeds on B, and p95 job latency with A dead is
within 1.2 x B alone.

    python bench/bench_failover.py --rounds 5 --jobs 20 --scale 0.02
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import job, start_sim

import briefd
from briefd.config import Settings


def _endpoints(path: Path, a: str, b: str) -> None:
    path.write_text(
        f"""
[[endpoints]]
name = "a"
kind = "compatible"
base_url = "{a}"

[[endpoints]]
name = "b"
kind = "compatible"
base_url = "{b}"

[[models]]
name = "failover"
use = ["a:m", "b:m"]

[[models]]
name = "b-alone"
use = ["b:m"]
""",
        encoding="utf-8",
    )


def _round(variant: str, path: Path, jobs: int, tag: str) -> dict[str, Any]:
    settings = Settings(
        endpoints=path,
        model=variant,
        max_concurrent=4,
        max_retries=2,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        breaker_cooldown_s=600,
    )
    with briefd.Pipeline(settings) as pipeline:
        started = time.monotonic()
        warm = pipeline.submit(job(f"{tag}-warm")).get(timeout=300)
        warm_s = time.monotonic() - started
        futures = [pipeline.submit(job(f"{tag}-{i}")) for i in range(jobs)]
        results = [f.get(timeout=300) for f in futures]
    latencies = sorted(r.metrics.total_ms for r in results)
    p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)]
    on_b = all(v.startswith("b:") for r in results for v in r.served_by.values())
    ok = all(r.status == "succeeded" for r in [warm, *results])
    return {"p95_ms": p95, "warm_s": warm_s, "ok": ok and on_b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--scale", type=float, default=0.02)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    a, a_url = start_sim(args.scale, "--fail-status", "503")
    b, b_url = start_sim(args.scale)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "endpoints.toml"
            _endpoints(path, a_url, b_url)
            seen: dict[str, list[dict[str, Any]]] = {"failover": [], "b-alone": []}
            for i in range(args.rounds):
                order = ["failover", "b-alone"] if i % 2 == 0 else ["b-alone", "failover"]
                for variant in order:
                    seen[variant].append(_round(variant, path, args.jobs, f"{variant}-{i}"))
    finally:
        a.terminate()
        b.terminate()
    load_after = os.getloadavg()[0]
    print(f"{args.rounds} interleaved rounds, {args.jobs} jobs each after one warm-up job, K=4, "
          f"scale {args.scale}; load {load_before:.2f} -> {load_after:.2f}")  # fmt: skip
    med = {v: statistics.median(r["p95_ms"] for r in rs) for v, rs in seen.items()}
    warm = {v: statistics.median(r["warm_s"] for r in rs) for v, rs in seen.items()}
    for variant, rows in seen.items():
        print(f"  {variant:9s} p95 job {med[variant]:8.0f} ms  warm-up job {warm[variant]:6.2f} s"
              f"  all succeeded on b: {all(r['ok'] for r in rows)}")  # fmt: skip
    ratio = med["failover"] / med["b-alone"]
    print(f"  p95 ratio failover / b alone: {ratio:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
