"""Run real briefd jobs against the simulated server and write the event log (a test helper).

The console tests need logs made by real jobs, not hand-written lines, and a
live process writing one beside ``briefd console``. This script is both:

    python tests/data/live_jobs.py --log FILE --results FILE            # the recorded set
    python tests/data/live_jobs.py --log FILE --results FILE --forever  # until SIGTERM

The recorded set is one clean job and one per kind of trouble (a 503, a hang
that times out, a 429 with Retry-After, invalid JSON, a 400), run at once
through one parallel pipeline, then one job through a sequential pipeline.
Each finished job's ``JobResult`` is appended to ``--results`` as a JSON line,
so a test can compare the report with the jobs' own results.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pykka
from loguru import logger

from briefd.api import Pipeline
from briefd.config import Settings
from briefd.messages import JobResult
from briefd.ops.logs import setup_logging
from briefd.sim.server import Fault, SimProfile, SimServer

API_KEY = "live-jobs-secret-0123456789"
STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
TROUBLE: dict[str, Fault] = {
    "clean-1": Fault(stage="nothing", times=1),
    "retry-1": Fault(stage="PLAYS_MD", status=503, times=1),
    "timeout-1": Fault(stage="BRIEFING_MD", hang=True, times=1),
    "ratelimit-1": Fault(stage="ANNEX_JSON", status=429, retry_after="0.2", times=1),
    "quality-1": Fault(stage="PROCUREMENT_JSON", invalid_json=True, times=1),
    "fail-1": Fault(stage="ANNEX_JSON", status=400, times=1),
}


def job(job_id: str) -> dict[str, Any]:
    """A job with a prompt per stage and a fallback for PROCUREMENT_JSON."""
    prompts = {s: f"Account Acme, {job_id}: write the {s.lower()} section." for s in STAGES}
    return {"job_id": job_id, "prompts": prompts, "procurement_metrics": {"budget": 1}}


def settings(sim: SimServer, log: Path, *, parallel: bool = True) -> Settings:
    """Fast retries, and a deadline just above the slowest stage so a hang times out soon."""
    slowest_s = max(sim.profile.latency_s.values()) * sim.profile.scale
    return Settings(
        base_url=sim.base_url,
        api_key=API_KEY,
        parallel=parallel,
        max_concurrent=2,
        timeout_ms=int(1000 * (slowest_s * 1.5 + 1.0)),
        connect_timeout_ms=1000,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        log_file=log,
        log_format="json",
        log_level="ERROR",
    )


def run(pipeline: Pipeline, job_ids: list[str], results: Path, stop: threading.Event) -> None:
    """Submit the jobs at once (they share the token cap) and record each result.

    Returns early when ``stop`` is set: closing the pipeline cancels what is left.
    """
    futures = [pipeline.submit(job(j)) for j in job_ids]
    deadline = time.monotonic() + 60.0
    with results.open("a", encoding="utf-8") as out:
        for future in futures:
            while True:
                try:
                    result: JobResult = future.get(timeout=0.2)
                    break
                except pykka.Timeout:
                    if stop.is_set() or time.monotonic() > deadline:
                        return
            out.write(result.model_dump_json() + "\n")
            out.flush()


def recorded(sim: SimServer, log: Path, results: Path, stop: threading.Event) -> None:
    """The recorded set: every kind of trouble once, then a sequential run."""
    for job_id, fault in TROUBLE.items():
        sim.inject(fault.model_copy(update={"job_id": job_id}))
    with Pipeline(settings(sim, log)) as pipeline:
        run(pipeline, list(TROUBLE), results, stop)
    with Pipeline(settings(sim, log, parallel=False)) as pipeline:
        run(pipeline, ["sequential-1"], results, stop)


def forever(sim: SimServer, log: Path, results: Path, stop: threading.Event) -> None:
    """Batches of three jobs until stopped; every third job meets a 503 once."""
    counter = itertools.count(1)
    with Pipeline(settings(sim, log)) as pipeline:
        while not stop.is_set():
            batch = [f"live-{next(counter)}" for _ in range(3)]
            sim.inject(Fault(job_id=batch[2], stage="PLAYS_MD", status=503, times=1))
            run(pipeline, batch, results, stop)
            stop.wait(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--scale", type=float, default=0.02, help="sim latency multiplier")
    args = parser.parse_args()
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    with SimServer(SimProfile(scale=args.scale)) as sim:
        setup_logging(settings(sim, args.log), stream=sys.stderr)
        if args.forever:
            forever(sim, args.log, args.results, stop)
        else:
            recorded(sim, args.log, args.results, stop)
    logger.complete()
    logger.remove()  # flushes the file sink's queue
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
