"""Publishing events: every event goes to the log and to the actor's observers.

The log is the operations record (the console reads it; its schema is
:mod:`briefd.ops.eventlog`); observers are how other parts of the program (metrics,
the in-process API, the daemon's journal) hear about a job without the actors
knowing who listens.

Publication is on every actor's hot path (each token grant and release is an
event), so an event no sink would take costs nothing but a level check: its
one-line summary and its v1 payload are computed only when some handler's level
admits it and briefd's logging is enabled. Profiled at 100 jobs K=16, building
them for records nobody kept was most of the time spent publishing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from briefd.messages import (
    DaemonReloading,
    DaemonStarted,
    DaemonStopping,
    DailyBudgetReleased,
    DailyBudgetSpent,
    Event,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobRestarted,
    JobStarted,
    LatencyMeasured,
    ProgressChanged,
    RateLimitCooldown,
    RollbackCleared,
    RollbackProbation,
    RollbackTripped,
    StageFailed,
    StageFellBack,
    StagePromptRendered,
    StageRetrying,
    StageStarted,
    StageSucceeded,
    TokenGranted,
    TokenReleased,
    WebhookAttempted,
)
from briefd.ops.eventlog import event_payload, level_for

Observer = Callable[[Event], None]
_LEVEL_NO = {"DEBUG": 10, "INFO": 20, "WARNING": 30}  # loguru's standard levels


def _logged(level: str) -> bool:
    """Would loguru keep a record at ``level`` from this module? (True when unsure.)

    Reads loguru's own fast-path state (the lowest level of any handler, and the
    per-module enabled cache that ``logger.enable``/``disable`` clear), the same
    checks ``logger.log`` makes, but before any work is done for the record.
    """
    core: Any = getattr(logger, "_core", None)
    if core is None:
        return True
    if _LEVEL_NO.get(level, 0) < getattr(core, "min_level", 0):
        return False
    return getattr(core, "enabled", {}).get(__name__) is not False


def describe(event: Event) -> str:
    """A one-line human summary of an event (the text log's message)."""
    job = getattr(event, "job_id", "-")
    match event:
        case StageStarted(stage=s, attempt=a):
            return f"{job} {s} started (attempt {a})"
        case StageRetrying(stage=s, attempt=a, wait_s=w, reason=r):
            return f"{job} {s} retrying in {w:.2f}s after attempt {a}: {r.code} {r.message}"
        case StageSucceeded(stage=s, elapsed_ms=ms, attempts=a):
            return f"{job} {s} succeeded in {ms} ms ({a} attempt{'s' if a != 1 else ''})"
        case StageFailed(stage=s, error=e):
            return f"{job} {s} failed: {e.code} {e.message} (hint: {e.hint})"
        case StageFellBack(stage=s, source=src):
            return f"{job} {s} fell back to the job's {src}"
        case StagePromptRendered(stage=s, prompt=text):
            return f"{job} {s} prompt rendered ({len(text)} chars)"
        case TokenGranted(stage=s, in_use=n, capacity=c):
            return f"{job} {s} got a token ({n}/{c} in use)"
        case TokenReleased(stage=s, in_use=n, capacity=c, reclaimed=r):
            return f"{job} {s} {'lost' if r else 'released'} its token ({n}/{c} in use)"
        case RateLimitCooldown(retry_after_s=w):
            return f"{job} rate limited: all grants paused for {w:.2f}s"
        case JobStarted(stages=st, parallel=p):
            return f"{job} started: {', '.join(st)} ({'parallel' if p else 'sequential'})"
        case ProgressChanged(progress=pr):
            return f"{job} progress {pr.percent:.0f}%"
        case LatencyMeasured(metrics=m):
            return f"{job} latency " + latency_table(m.stages_ms, m)
        case JobCompleted(result=r):
            return f"{job} {r.status} in {r.metrics.total_ms} ms"
        case JobAccepted(status=st, queued=q):
            return f"{job} accepted ({st}; {q} queued)"
        case JobCancelled(reason=why, was=was):
            return f"{job} cancelled while {was}: {why}"
        case JobRestarted(runs=n, reason=why):
            return f"{job} restarted after {n} dead run{'s' if n != 1 else ''}: {why}"
        case DaemonStarted(url=url, resumed=n, max_concurrent=c):
            return f"daemon listening on {url} ({c} tokens; {n} unfinished jobs resumed)"
        case DaemonReloading(changed=changed, needs_restart=later):
            done = ", ".join(f"{k}: {v}" for k, v in changed.items()) or "nothing live"
            return f"daemon reloaded settings: {done}" + (
                f" (restart needed for {', '.join(later)})" if later else ""
            )
        case DaemonStopping(signal=sig, grace_s=g, active=a, queued=q):
            return f"daemon stopping on {sig}: {a} running get {g:g}s, {q} queued stay journaled"
        case RollbackTripped(reason=why, probation_s=p):
            return f"automatic rollback: new jobs run sequentially ({why}); probation in {p:g}s"
        case RollbackProbation(trial_fraction=f, reason=why):
            return f"automatic rollback on probation: {f:.0%} of new jobs run parallel ({why})"
        case RollbackCleared(reason=why):
            return f"automatic rollback cleared: new jobs run parallel again ({why})"
        case DailyBudgetSpent(spent_usd=s, budget_usd=b, queued=q):
            return f"daily budget spent (${s:.4f} of ${b:.4f}): new jobs wait; {q} queued"
        case WebhookAttempted(event_type=t, attempt=a, outcome=o, status=st, error=e):
            return f"{job} webhook {t} attempt {a}: {o} ({st or e or 'no answer'})"
        case DailyBudgetReleased(reason=why, spent_usd=s):
            return f"daily budget released ({why}; ${s:.4f} spent today): held jobs start"
    return f"{job} {event.__class__.__name__}"


def latency_table(stages_ms: dict[str, int], m: object) -> str:
    """The seed's step-5 table on one line (a stage's figure is its call time)."""
    parts = [f"{name}={ms}ms" for name, ms in stages_ms.items()]
    parts.append(f"parallel_group={getattr(m, 'parallel_group_ms', 0)}ms")
    parts.append(f"sequential_group={getattr(m, 'sequential_group_ms', 0)}ms")
    parts.append(f"total={getattr(m, 'total_ms', 0)}ms")
    parts.append(f"speedup={getattr(m, 'speedup_ratio', 0.0):.2f}x (sequential work / wall)")
    return " | ".join(parts)


def publish(event: Event, observers: Sequence[Observer] = ()) -> None:
    """Log ``event`` and hand it to each observer; a failing observer is logged, not raised.

    The log gets the v1 payload (:func:`briefd.ops.eventlog.event_payload`: documents as
    digests); observers get the event itself, documents and all.
    """
    level = level_for(event.type)
    if _logged(level):
        logger.bind(event=event.type, payload=event_payload(event)).log(level, describe(event))
    for observer in observers:
        try:
            observer(event)
        except Exception as err:  # an observer must not take the actor down
            logger.error("observer {} failed on {}: {}", observer, event.type, repr(err))
