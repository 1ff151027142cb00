"""How the console copes with a long log: first snapshot of 100,000 lines, then each update.

    .venv/bin/python bench/bench_console.py [--lines 100000] [--updates 50] [--batch 40]

Writes a log of real v1 lines (made by the same code that writes the event log,
from real message models) for jobs of four stages with a retry now and then,
then times what ``briefd console`` does: read and aggregate everything and
render the first screen; then, per update, read ``--batch`` new lines, apply
them, take a snapshot and render it. Figures are printed side by side with
their ratios; nothing is asserted (a test would flake on a busy machine).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from rich.console import Console

from briefd.messages import (
    ErrorCode,
    Event,
    JobCompleted,
    JobMetrics,
    JobResult,
    JobStarted,
    JobStatus,
    LatencyMeasured,
    PipelineError,
    Progress,
    ProgressChanged,
    StageRetrying,
    StageStarted,
    StageState,
    StageSucceeded,
    TokenGranted,
    TokenReleased,
)
from briefd.ops.console import render
from briefd.ops.eventlog import LogFollower, dumps_line, event_payload, level_for, line_of
from briefd.ops.events import describe
from briefd.ops.view import OpsView

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")


def job_events(n: int, t0: float) -> list[Event]:
    """One job's events, in the order a real run logs them (every 7th job retries once)."""
    jid, ts = f"job-{n}", t0
    out: list[Event] = [
        JobStarted(job_id=jid, stages=list(STAGES), parallel=True, max_concurrent=2)
    ]
    states = dict.fromkeys(STAGES, StageState.PENDING)
    for i, stage in enumerate(STAGES):
        if n % 7 == 0 and i == 1:
            err = PipelineError(stage=stage, code=ErrorCode.TIMEOUT, message="slow", hint="h")
            out.append(StageRetrying(job_id=jid, stage=stage, attempt=1, wait_s=0.1, reason=err))
        out.append(TokenGranted(job_id=jid, stage=stage, lease_id=n * 4 + i, in_use=1, capacity=2))
        out.append(StageStarted(job_id=jid, stage=stage, attempt=1))
        states[stage] = StageState.RUNNING
        out.append(
            ProgressChanged(job_id=jid, stage=stage, progress=Progress(stages=states, percent=50))
        )
        out.append(TokenReleased(job_id=jid, stage=stage, lease_id=n * 4 + i, in_use=0, capacity=2))
        doc = f"# {stage}\n" + "text " * 200
        out.append(
            StageSucceeded(job_id=jid, stage=stage, document=doc, elapsed_ms=900 + i, attempts=1)
        )
        states[stage] = StageState.COMPLETE
        out.append(
            ProgressChanged(job_id=jid, stage=stage, progress=Progress(stages=states, percent=80))
        )
    metrics = JobMetrics(
        stages_ms={s: 900 + n % 300 for s in STAGES},
        parallel_group_ms=1000,
        sequential_group_ms=900,
        total_ms=1900 + n % 300,
        speedup_ratio=1.8,
        usage={},
        attempts=dict.fromkeys(STAGES, 1),
    )
    result = JobResult(
        job_id=jid,
        status=JobStatus.SUCCEEDED,
        documents=dict.fromkeys(STAGES, "doc"),
        errors=[],
        fallbacks=[],
        progress=Progress(stages=states, percent=100),
        metrics=metrics,
    )
    out += [LatencyMeasured(job_id=jid, metrics=metrics), JobCompleted(job_id=jid, result=result)]
    return [e.model_copy(update={"ts": ts + i * 0.01}) for i, e in enumerate(out)]


def write_lines(out: TextIO, lines: int, start_job: int = 0) -> int:
    """Write at least ``lines`` log lines; returns the next job number."""
    n, written, t0 = start_job, 0, time.time() - 3600
    while written < lines:
        for event in job_events(n, t0 + n * 0.5):
            line = line_of(event_payload(event), level_for(event.type), describe(event))
            out.write(dumps_line(line) + "\n")
            written += 1
        n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--batch", type=int, default=40, help="new lines per update")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "briefd.log"
        with log.open("w", encoding="utf-8") as out:
            next_job = write_lines(out, args.lines)
        size_mb = log.stat().st_size / 1e6
        screen = Console(file=io.StringIO(), width=160, height=50, force_terminal=True)

        start = time.perf_counter()
        view, follower = OpsView(window_s=900.0), LogFollower(log)
        view.apply_all(follower.read())
        screen.print(render(view.snapshot(time.time()), source=str(log)))
        first_s = time.perf_counter() - start
        lines = follower.stats.lines

        costs = []
        for _ in range(args.updates):
            with log.open("a", encoding="utf-8") as out:
                next_job = write_lines(out, args.batch, next_job)
            start = time.perf_counter()
            view.apply_all(follower.read())
            screen.print(render(view.snapshot(time.time()), source=str(log)))
            costs.append(time.perf_counter() - start)
        follower.close()

    update_s = statistics.median(costs)
    per_line_us = first_s / lines * 1e6
    print(f"log: {lines} lines, {size_mb:.1f} MB")
    print(f"{'first snapshot':<28}{first_s * 1000:>10.1f} ms   ({per_line_us:.1f} us/line)")
    print(f"{'update (median)':<28}{update_s * 1000:>10.1f} ms   ({args.batch} new lines)")
    print(f"{'first / update':<28}{first_s / update_s:>10.1f} x")
    print(f"{'update / refresh period':<28}{update_s / 0.5:>10.3f}   (console refresh every 0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
