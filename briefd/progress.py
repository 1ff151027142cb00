"""Job bookkeeping that is pure arithmetic: progress percent, status and latency figures.

Kept out of the coordinator so it can be read (and tested) without actors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from briefd.config import PipelineSpec
from briefd.latency import speedup_ratio, stage_work_ms, work_ms
from briefd.messages import JobMetrics, JobStatus, Progress, ServerWork, StageState, Usage
from briefd.worktime import RatesOf


@dataclass
class StageRecord:
    """What the coordinator knows of one stage of its job."""

    state: StageState = StageState.PENDING
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    queued_ms: int = 0  # the stage's clocks, as its StageSucceeded/StageFailed said
    call_ms: int = 0
    ttft_ms: int | None = None
    server_ms: int | None = None
    server_work: ServerWork | None = None


RUNNING_SHARE = 0.5
"""A running stage counts half its weight (seed step 4) ..."""
STREAMED_SHARE = 0.45
"""... and a streaming one up to this much more, with its fraction (tokens / max_tokens, itself
capped at 0.95 by the stage): at most 0.93 of its weight, never done before it is."""


def progress(
    pipeline: PipelineSpec,
    records: dict[str, StageRecord],
    streamed: Mapping[str, float] | None = None,
) -> Progress:
    """Seed step 4: weighted percent, a running stage counting half, and a streaming stage
    half plus :data:`STREAMED_SHARE` x its ``streamed`` fraction (its last StageProgress).

    Half at once keeps the seed's figure for a stage whose answer is not streamed; the
    fraction moves a streamed one on from there as its tokens arrive, so the percent no
    longer jumps from 50 to 100 per stage. Against ``max_tokens`` the fraction undershoots
    (a document rarely fills its limit), which leaves the jump at the end smaller, not gone.
    """
    total = sum(s.weight for s in pipeline.stages) or 1.0
    done = 0.0
    for s in pipeline.stages:
        state = records[s.name].state
        if state is StageState.COMPLETE:
            done += s.weight
        elif state is StageState.RUNNING:
            fraction = min(max((streamed or {}).get(s.name, 0.0), 0.0), 1.0)
            done += s.weight * (RUNNING_SHARE + STREAMED_SHARE * fraction)
    return Progress(
        stages={name: rec.state for name, rec in records.items()},
        percent=round(100.0 * done / total, 1),
    )


def job_status(documents: dict[str, object], failed: list[str], fallbacks: list[str]) -> JobStatus:
    """succeeded: every stage succeeded; partial: at least one stage's model call produced its
    document; failed: none did.

    A fallback (the job's own ``procurement_metrics`` standing in for a failed stage) is a
    document but not the model's work: a job whose every call failed is ``failed`` (exit 1)
    even when a fallback filled one slot, or a caller would take an empty run for a usable one.
    """
    if not failed and not fallbacks:
        return JobStatus.SUCCEEDED
    fell_back = set(fallbacks)
    if any(doc is not None for name, doc in documents.items() if name not in fell_back):
        return JobStatus.PARTIAL
    return JobStatus.FAILED


def _span_ms(records: list[StageRecord]) -> int:
    starts = [r.started_at for r in records if r.started_at is not None]
    ends = [r.ended_at for r in records if r.ended_at is not None]
    if not starts or not ends:
        return 0
    return max(0, round((max(ends) - min(starts)) * 1000))


def _wall_ms(r: StageRecord) -> int:
    if r.started_at is None or r.ended_at is None:
        return 0
    return round((r.ended_at - r.started_at) * 1000)


def job_metrics(
    pipeline: PipelineSpec,
    records: dict[str, StageRecord],
    started: float,
    ended: float,
    rates: RatesOf | None = None,
) -> JobMetrics:
    """Seed step 5: per-stage times, the two groups, total and speed-up.

    A stage's time (``stages_ms``) is its calls' time, the server's measure where it
    gave one (:func:`briefd.latency.work_ms`); its start-to-end is ``wall_ms``. The
    parallel group is the stages with no dependencies; the sequential group is every
    other stage (both spans of wall time). ``speedup_ratio`` = sum of the stages'
    sequential-equivalent work (``work_ms``: their calls at the alone ``rates`` of their
    server, :mod:`briefd.worktime`, else ``stages_ms``) / total.
    """
    stages_ms = {name: work_ms(r.call_ms, r.server_ms) for name, r in records.items()}
    work = {
        name: stage_work_ms(r.call_ms, r.server_ms, r.server_work, rates)
        for name, r in records.items()
    }
    total_ms = max(0, round((ended - started) * 1000))
    roots = set(pipeline.roots)
    return JobMetrics(
        stages_ms=stages_ms,
        parallel_group_ms=_span_ms([r for n, r in records.items() if n in roots]),
        sequential_group_ms=_span_ms([r for n, r in records.items() if n not in roots]),
        total_ms=total_ms,
        speedup_ratio=speedup_ratio(work, total_ms),
        work_ms=work,
        usage={name: r.usage for name, r in records.items()},
        attempts={name: r.attempts for name, r in records.items()},
        wall_ms={name: _wall_ms(r) for name, r in records.items()},
        queued_ms={name: r.queued_ms for name, r in records.items()},
        call_ms={name: r.call_ms for name, r in records.items()},
        ttft_ms={name: r.ttft_ms for name, r in records.items() if r.ttft_ms is not None},
    )
