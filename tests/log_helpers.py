"""Event-log lines as the daemon's logger writes them, for tests of the console and report.

One place for the real serialiser's round trip (``event_payload`` -> ``line_of`` ->
``dumps_line``), so every test reads logs exactly as ``briefd serve`` writes them.
"""

from __future__ import annotations

from pathlib import Path

from briefd.messages import DaemonStarted, Event, JobMetrics, JobResult, JobStatus, Progress
from briefd.ops.eventlog import Record, dumps_line, event_payload, level_for, line_of, parse_line


def log_line(event: Event) -> str:
    """``event`` as one line of the event log (no newline)."""
    return dumps_line(line_of(event_payload(event), level_for(event.type), ""))


def log_record(event: Event) -> Record:
    """``event`` as the console reads it back from the log."""
    return parse_line(log_line(event))


def write_log(path: Path, *events: tuple[float, Event]) -> Path:
    """Append ``events`` (each at its time) to ``path`` as the daemon's logger writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for ts, event in events:
            out.write(log_line(event.model_copy(update={"ts": ts})) + "\n")
    return path


def daemon_started(
    port: int, *, max_concurrent: int = 2, daemon_id: str | None = None
) -> DaemonStarted:
    """The DaemonStarted of a daemon listening on ``port`` (its pid is the port, for tests)."""
    return DaemonStarted(
        url=f"http://127.0.0.1:{port}",
        pid=port,
        version="0.1.0",
        resumed=0,
        max_active_jobs=2,
        max_queued_jobs=10,
        max_concurrent=max_concurrent,
        daemon_id=daemon_id,
    )


def succeeded_result(job_id: str, documents: dict[str, object]) -> JobResult:
    """A finished job's result holding ``documents`` (what a ``JobCompleted`` carries)."""
    metrics = JobMetrics(
        stages_ms={},
        parallel_group_ms=0,
        sequential_group_ms=0,
        total_ms=5,
        speedup_ratio=1.0,
        usage={},
        attempts={},
    )
    return JobResult(
        job_id=job_id,
        status=JobStatus.SUCCEEDED,
        documents=documents,
        errors=[],
        fallbacks=[],
        progress=Progress(stages={}, percent=100.0),
        metrics=metrics,
    )
