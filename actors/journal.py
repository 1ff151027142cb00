"""The journal actor: writes what coordinators and the root report, in the order they report it.

Coordinators publish stage events from their own threads and must not wait
for a disk: they ``tell`` this actor (:func:`journal_observer`), which commits
each one to the :class:`~briefd.store.base.Store`. Because one inbox carries
both the stage results and the root's ``LoadJob``, a restarted run always
sees every document its dead predecessor reported, and never pays for one
twice.

A write the disk refuses (disk full, I/O error: :class:`StoreUnavailable`)
is not dropped: it waits in a backlog, with everything told after it, in
order, and the actor tries again every ``retry_s`` until the store takes it.
So a full disk holds jobs where they are (``/healthz`` says why) instead of
leaving them ``running`` forever, and when space returns they go on; a
``LoadJob`` waits too, so a resumed run still sees every document. Any other
failure (a bug) is logged and that one message dropped, so the other jobs go on.

Every event of a job's stream (:data:`briefd.store.events.STREAMED`) is recorded too,
in order (:mod:`briefd.store.events`): one that goes with a write (a stage started,
succeeded, failed) in that write's transaction, with the events told before it; the
others (retries, progress, the job's start) together in one transaction once the
inbox is empty, so a burst costs one commit, not one per event.

A write the store refuses with :class:`ClaimLost` (another daemon took the job
over: this one's lease lapsed) is the opposite of a full disk: trying again
could only overwrite the newer run, so it is logged once and dropped, and a
``LoadJob`` refused that way answers ``JobLoaded(job=None)``: not ours to run.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

import pykka
from loguru import logger

from briefd.messages import (
    CloseJob,
    Event,
    FinishJob,
    JobCompleted,
    JobLoaded,
    LoadJob,
    StageFailed,
    StagePromptRendered,
    StageStarted,
    StageSucceeded,
    SuspendJobs,
    Tick,
)
from briefd.ops.events import Observer, publish
from briefd.store.base import ClaimLost, Store, StoreUnavailable
from briefd.store.events import TERMINAL, EventLog, cap_staged, streamed
from briefd.threads import LeanThreadingActor
from briefd.timers import Timers

RETRY_S = 0.5
"""How often writes the store refused are tried again."""

_JOURNALED = (StageStarted, StageSucceeded, StageFailed, StagePromptRendered)


def journal_observer(ref: pykka.ActorRef[Any]) -> Observer:
    """A coordinator observer that forwards only what the journal records (quick: a ``tell``):
    the stage writes and the events of the job's stream (its ``JobCompleted`` is the
    store's own, written with the terminal state)."""

    def observe(event: Event) -> None:
        if isinstance(event, _JOURNALED) or (streamed(event) and event.type != TERMINAL):
            ref.tell(event)

    return observe


class JournalActor(LeanThreadingActor):
    """Owns the writes of running jobs to the journal."""

    def __init__(self, journal: Store, retry_s: float = RETRY_S) -> None:
        super().__init__()
        self._journal = journal
        self._retry_s = retry_s
        self._backlog: deque[Any] = deque()  # in order; the head is the one that failed
        self._events: EventLog | None = getattr(journal, "event_log", None)
        self._unsaved: list[Event] = []  # streamed events not committed yet, in order
        self._timers = Timers()

    def on_start(self) -> None:
        self._timers.every(self.actor_ref, self._retry_s, Tick())

    def on_stop(self) -> None:
        self._timers.close()
        self._drain()
        self._save_events()
        if self._backlog:
            logger.error(
                "journal: stopping with {} write(s) the store refused; the jobs resume from "
                "their last committed state at the next start",
                len(self._backlog),
            )

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Tick):
            self._backlog.append(message)
        self._drain()
        if not self._backlog and self.actor_inbox.empty():
            self._save_events()  # nothing more to go with: one transaction for the burst
        return None

    def _save_events(self) -> None:
        if self._events is None or not self._unsaved:
            return
        try:
            self._events.append(self._unsaved)
        except StoreUnavailable as err:  # kept, in order, for the next write or Tick
            logger.debug("journal: {} event(s) wait: {}", len(self._unsaved), err)
            self._unsaved = cap_staged(self._unsaved)
            return
        except Exception as err:  # a bug: drop them, keep journaling
            logger.opt(exception=err).error("journal: cannot record events: {!r}", err)
        self._unsaved = []

    def _drain(self) -> None:
        """Apply the backlog in order; stop at the first write the store refuses."""
        while self._backlog:
            message = self._backlog[0]
            if streamed(message) and not isinstance(message, _JOURNALED):
                if self._events is not None:  # no write of its own: goes with the next
                    self._unsaved.append(message)
                self._backlog.popleft()
                continue
            try:
                self._write(message)
            except StoreUnavailable as err:
                logger.debug("journal: {} waits: {}", type(message).__name__, err)
                return
            except ClaimLost as err:  # a newer claim's run owns the job: never retried
                for job_id in err.job_ids:
                    logger.warning(
                        "job {}: claim lost to another daemon; write dropped ({})",
                        job_id,
                        type(message).__name__,
                    )
                if isinstance(message, LoadJob):
                    self._reply(message, JobLoaded(**_empty(message)))
            except Exception as err:  # keep journaling the other jobs
                logger.opt(exception=err).error(
                    "journal: cannot record {}: {}", type(message).__name__, repr(err)
                )
                if isinstance(message, LoadJob):
                    self._reply(message, JobLoaded(**_empty(message)))
            self._backlog.popleft()

    def _write(self, message: Any) -> None:
        """Apply ``message`` with the events told before it (and itself, a stage event) in
        the same transaction; kept for later if the write made none."""
        if self._events is None:
            self._apply(message)
            return
        pending = [*self._unsaved, *([message] if streamed(message) else [])]
        with self._events.staged(pending) as staged:
            self._apply(message)
        if staged.flushed:
            self._unsaved = []
        elif streamed(message):  # nothing committed (the stage had ended)
            self._unsaved = pending

    def _apply(self, message: Any) -> None:
        j = self._journal
        match message:
            case StageStarted(job_id=job, stage=stage, attempt=attempt):
                j.stage_started(job, stage, attempt, event=message)
            case StageSucceeded(job_id=job, stage=stage, document=doc, attempts=n):
                j.stage_succeeded(job, stage, doc, n, event=message)
            case StageFailed(job_id=job, stage=stage, error=error, attempts=n):
                j.stage_failed(job, stage, error, n, event=message)
            case StagePromptRendered(job_id=job, stage=stage, prompt=prompt):
                j.stage_prompt(job, stage, prompt)
            case LoadJob():
                run = j.start_run(message.job_id)
                self._reply(
                    message,
                    JobLoaded(
                        job_id=message.job_id,
                        generation=message.generation,
                        job=run.job,
                        done_stages=run.done_stages,
                        failed_stages=run.failed_stages,
                        runs_died=run.runs_died,
                        submitted_at=run.submitted_at,
                        pipeline=run.pipeline,
                        prompts=run.prompts,
                    ),
                )
            case FinishJob(result=result):
                if j.finish(result):  # logged once committed: one terminal event per job
                    publish(JobCompleted(job_id=result.job_id, result=result))
            case CloseJob():
                closed = j.close_job(
                    message.job_id, message.status, message.code, message.message, message.hint
                )
                if closed is not None:  # one terminal event, as a run's end would publish
                    publish(JobCompleted(job_id=closed.job_id, result=closed))
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
