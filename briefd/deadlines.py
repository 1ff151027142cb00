"""A job's deadline: when it falls, and the error a stage ends with past it.

A job may carry ``deadline_s`` (else ``BRIEFD_JOB_DEADLINE_S``; neither: no
deadline), counted from the job's *submission* (the coordinator's
``admitted_at``, Unix time), not from this run's start: a job resumed after a
daemon restart keeps its deadline, as it keeps its place in the token queue.

Past it, nothing new is spent on the job: a stage not started yet, waiting for a
token or in a backoff ends ``DEADLINE_EXCEEDED`` (and withdraws its token
request); a stage whose retry would only start after the deadline ends so at
once. A call already on the wire is left to finish, because it is paid for: its
document is kept if it succeeds, and if it fails it is not retried. The clock
is the wall clock (``time.time``), the one ``admitted_at`` is on; the waits
are timers of the process's one timer thread (:mod:`briefd.timers`).
"""

from __future__ import annotations

import math
import time

from briefd.config import Settings
from briefd.messages import ErrorCode, JobSpec, PipelineError

HINT = (
    "raise the job's deadline_s (or BRIEFD_JOB_DEADLINE_S, the default for jobs without one), "
    "or let the job wait less: more tokens (BRIEFD_MAX_CONCURRENT) or fewer jobs at once"
)


def deadline_at(job: JobSpec, settings: Settings, admitted_at: float) -> float | None:
    """The Unix time past which ``job`` (submitted at ``admitted_at``) starts nothing new."""
    seconds = job.deadline_s if job.deadline_s is not None else settings.job_deadline_s
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return admitted_at + seconds


def passed(at: float | None, now: float | None = None) -> bool:
    """Whether the deadline ``at`` (Unix time; None: none) has passed."""
    return at is not None and (time.time() if now is None else now) >= at


def deadline_error(
    stage: str,
    *,
    at: float,
    admitted_at: float,
    what: str,
    now: float | None = None,
) -> PipelineError:
    """``DEADLINE_EXCEEDED`` for ``stage``: the deadline, how long the job has run, and
    ``what`` the stage was doing (``"waiting for an execution token"``...)."""
    now = time.time() if now is None else now
    if admitted_at > 0:
        when = f"the job's deadline of {at - admitted_at:g}s after its submission"
        ran = f"; the job has run {max(now - admitted_at, 0.0):.1f}s"
    else:  # the submission time is unknown: say when, not how long
        when = "the job's deadline"
        ran = ""
    return PipelineError(
        stage=stage,
        code=ErrorCode.DEADLINE_EXCEEDED,
        message=f"{when} passed{ran}: {what}" if passed(at, now) else f"{when}: {what}{ran}",
        hint=HINT,
    )
