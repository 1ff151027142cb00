"""``on_event`` callbacks on a thread of their own, so that user code cannot stall a job.

An actor's observers run on the actor's thread, in the middle of its work: a
callback that blocked there would hold a stage (and its execution token), and
one that raised would be logged by :func:`briefd.ops.events.publish` on every
event. So the in-process API does not hand user callbacks to the actors. Each
:class:`~briefd.Pipeline` has one :class:`EventDispatcher`: the actors only
append the event to its bounded queue, and its thread, ``briefd-events``
(started on first use), calls the callbacks one event at a time, in the order
the events were published.

What a callback too slow to keep up loses, and what it never loses:

* :class:`StageProgress` events *merge*: one still waiting for the same job,
  stage, attempt and callback is replaced by the newer one (progress is a
  level, not a count), so a streamed stage adds at most one waiting event;
* past :data:`QUEUE_SIZE` waiting events, any other event is *dropped* and
  counted (:attr:`DispatchStats.dropped`), with one warning in the log;
* :class:`JobCompleted` is never dropped: one per job, whose result the
  pipeline holds anyway, so it cannot grow the queue beyond the jobs submitted.

A callback that raises is logged once with its traceback; its later failures
are counted (:attr:`DispatchStats.failed`) and summed up in one line at close.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from loguru import logger

from briefd.events import EventCallback
from briefd.messages import Event, JobCompleted, StageProgress
from briefd.ops.events import Observer

QUEUE_SIZE = 1024
"""Events waiting for the dispatcher thread before others are dropped."""


@dataclass(frozen=True)
class DispatchStats:
    """What the dispatcher did so far (a snapshot)."""

    delivered: int
    waiting: int
    merged: int
    dropped: int
    failed: int


@dataclass
class _Item:
    callback: EventCallback
    event: Event
    key: tuple[Any, ...] | None = None  # a StageProgress's merge key


class EventDispatcher:
    """A bounded queue of (callback, event) and the one thread that drains it."""

    def __init__(self, maxsize: int = QUEUE_SIZE, name: str = "briefd-events") -> None:
        self._maxsize = maxsize
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._progress: dict[tuple[Any, ...], _Item] = {}
        self._thread: threading.Thread | None = None
        self._busy = False
        self._closed = False
        self._delivered = self._merged = self._dropped = 0
        self._failures: dict[int, tuple[EventCallback, int]] = {}

    def observer(self, callback: EventCallback) -> Observer:
        """An observer for the actors: it queues each event for ``callback`` and returns."""

        def enqueue(event: Event) -> None:
            self.put(callback, event)

        return enqueue

    def put(self, callback: EventCallback, event: Event) -> None:
        """Queue ``event`` for ``callback`` (any thread; never blocks on the callback)."""
        with self._cond:
            if self._closed:
                return
            key = None
            if isinstance(event, StageProgress):
                key = (id(callback), event.job_id, event.stage, event.attempt)
                waiting = self._progress.get(key)
                if waiting is not None:
                    waiting.event = event
                    self._merged += 1
                    return
            if len(self._queue) >= self._maxsize and not isinstance(event, JobCompleted):
                self._dropped += 1
                if self._dropped == 1:
                    logger.warning(
                        "an on_event callback is too slow: {} events wait; events are dropped "
                        "(JobCompleted never is) until it catches up",
                        len(self._queue),
                    )
                return
            item = _Item(callback, event, key)
            if key is not None:
                self._progress[key] = item
            self._queue.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                if item.key is not None:
                    del self._progress[item.key]
                self._busy = True
            try:
                item.callback(item.event)
            except BaseException as err:  # a callback must not end the thread either
                self._failed(item.callback, item.event, err)
            finally:
                with self._cond:
                    self._busy = False
                    self._delivered += 1
                    self._cond.notify_all()

    def _failed(self, callback: EventCallback, event: Event, err: BaseException) -> None:
        with self._cond:
            _, count = self._failures.get(id(callback), (callback, 0))
            self._failures[id(callback)] = (callback, count + 1)
        if count == 0:
            logger.opt(exception=err).error(
                "on_event callback {} raised on {} (logged once; the job goes on): {!r}",
                getattr(callback, "__qualname__", callback),
                event.type,
                err,
            )

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event has been handed over; False at the deadline."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Deliver what waits (up to ``timeout_s``), then stop the thread; later events are
        ignored. A callback still running then is left to finish on its own (daemon thread)."""
        drained = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            left = len(self._queue)
            self._queue.clear()
            self._progress.clear()
            self._cond.notify_all()
            failures = list(self._failures.values())
        if not drained:
            logger.warning(
                "on_event: a callback did not return within {:g}s; {} events were not delivered",
                timeout_s,
                left,
            )
        for callback, count in failures:
            if count > 1:
                logger.warning(
                    "on_event callback {} raised {} times in all",
                    getattr(callback, "__qualname__", callback),
                    count,
                )

    def stats(self) -> DispatchStats:
        with self._cond:
            return DispatchStats(
                delivered=self._delivered,
                waiting=len(self._queue),
                merged=self._merged,
                dropped=self._dropped,
                failed=sum(count for _, count in self._failures.values()),
            )
