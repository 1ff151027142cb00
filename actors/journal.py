"""The journal actor: writes what coordinators and the root report, in the order they report it.

Coordinators publish stage events from their own threads and must not wait
for a disk: they ``tell`` this actor (:func:`journal_observer`), which commits
each one to the :class:`~briefd.store.base.Store`. Because one inbox carries
both the stage results and the root's ``LoadJob``, a restarted run always
sees every document its dead predecessor reported, and never pays for one
twice.

A failing write (disk full, I/O error) is logged and the actor goes on: the
job then resumes from the last committed state at the next start.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pykka
from loguru import logger

from briefd.messages import (
    CloseJob,
    Event,
    FinishJob,
    JobLoaded,
    LoadJob,
    StageFailed,
    StageStarted,
    StageSucceeded,
    SuspendJobs,
)
from briefd.ops.events import Observer
from briefd.store.base import Store

_JOURNALED = (StageStarted, StageSucceeded, StageFailed)


def journal_observer(ref: pykka.ActorRef[Any]) -> Observer:
    """A coordinator observer that forwards only what the journal records (quick: a ``tell``)."""

    def observe(event: Event) -> None:
        if isinstance(event, _JOURNALED):
            ref.tell(event)

    return observe


class JournalActor(pykka.ThreadingActor):
    """Owns the writes of running jobs to the journal."""

    def __init__(self, journal: Store) -> None:
        super().__init__()
        self._journal = journal

    def on_receive(self, message: Any) -> Any:
        try:
            self._apply(message)
        except Exception as err:  # keep journaling the other jobs
            logger.opt(exception=err).error(
                "journal: cannot record {}: {}", type(message).__name__, repr(err)
            )
            if isinstance(message, LoadJob):
                self._reply(message, JobLoaded(**_empty(message)))
        return None

    def _apply(self, message: Any) -> None:
        j = self._journal
        match message:
            case StageStarted(job_id=job, stage=stage, attempt=attempt):
                j.stage_started(job, stage, attempt)
            case StageSucceeded(job_id=job, stage=stage, document=doc, attempts=n):
                j.stage_succeeded(job, stage, doc, n)
            case StageFailed(job_id=job, stage=stage, error=error, attempts=n):
                j.stage_failed(job, stage, error, n)
            case LoadJob():
                run = j.start_run(message.job_id)
                self._reply(
                    message,
                    JobLoaded(
                        job_id=message.job_id,
                        generation=message.generation,
                        job=run.job,
                        done_stages=run.done_stages,
                        runs_died=run.runs_died,
                    ),
                )
            case FinishJob(result=result):
                j.finish(result)
            case CloseJob():
                j.close_job(
                    message.job_id, message.status, message.code, message.message, message.hint
                )
            case SuspendJobs(job_ids=ids):
                j.suspend(ids)
            case _:
                logger.warning("journal: unexpected {!r}", type(message).__name__)

    @staticmethod
    def _reply(load: LoadJob, loaded: JobLoaded) -> None:
        ref = pykka.ActorRegistry.get_by_urn(load.reply_to)
        if ref is not None:  # else the root is stopping: the job waits in the journal
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(loaded)


def _empty(load: LoadJob) -> dict[str, Any]:
    return {
        "job_id": load.job_id,
        "generation": load.generation,
        "job": None,
        "done_stages": {},
        "runs_died": 0,
    }
