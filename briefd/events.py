"""The events a job publishes, for ``on_event`` callbacks: ``briefd.events.StageStarted``, ...

Pass a callback to :func:`briefd.run` or :meth:`briefd.Pipeline.submit`; it
receives every event of that job, in the order they were published::

    import briefd
    from briefd import events

    def show(event: events.Event) -> None:
        if isinstance(event, events.StageSucceeded):
            print(event.stage, "done in", event.elapsed_ms, "ms")

    result = briefd.run("examples/northwind-briefing.json", on_event=show)

A job's events, in the order a run makes them: :class:`JobStarted`; per stage
:class:`StageStarted` (each attempt), :class:`StageProgress` (streamed calls,
a few a second), :class:`StageRetrying`, then :class:`StageSucceeded` or
:class:`StageFailed` (and :class:`StageFellBack` when a failed stage uses the
job's own data); :class:`ProgressChanged` after each stage ends (the job's
weighted percent); :class:`LatencyMeasured`; and last :class:`JobCompleted`
with the :class:`JobResult`. Each is a frozen pydantic model (``.type`` names
it; ``model_dump()`` gives the fields; ``docs/events.md`` lists them all).

**Which thread calls back.** Not an actor's: each :class:`~briefd.Pipeline`
has one dispatcher thread, ``briefd-events``, that calls every ``on_event``
callback of its jobs, one event at a time. The actors only put the event on a
bounded queue and go on, so a slow callback cannot stall a job, and one that
raises is logged once (later failures of the same callback are counted, not
logged) and cannot break it. A callback too slow to keep up loses events, not
the job: :class:`StageProgress` events merge (a newer one for the same stage
replaces one not yet delivered), and when the queue is full
(:data:`briefd.dispatch.QUEUE_SIZE`) other events are dropped and counted
(:meth:`briefd.Pipeline.events_dropped`), except :class:`JobCompleted`, which
is always delivered. ``briefd.run`` returns only after its callback has had
every event (up to a few seconds' wait for a callback that hangs).
"""

from __future__ import annotations

from collections.abc import Callable

from briefd.messages import (
    Event,
    JobCompleted,
    JobMetrics,
    JobResult,
    JobStarted,
    LatencyMeasured,
    PipelineError,
    Progress,
    ProgressChanged,
    StageFailed,
    StageFailedOver,
    StageFellBack,
    StageProgress,
    StageRetrying,
    StageStarted,
    StageSucceeded,
)

EventCallback = Callable[[Event], None]
"""An ``on_event`` callback: called with each event of a job, on the dispatcher thread."""

__all__ = [
    "Event",
    "EventCallback",
    "JobCompleted",
    "JobMetrics",
    "JobResult",
    "JobStarted",
    "LatencyMeasured",
    "PipelineError",
    "Progress",
    "ProgressChanged",
    "StageFailed",
    "StageFailedOver",
    "StageFellBack",
    "StageProgress",
    "StageRetrying",
    "StageStarted",
    "StageSucceeded",
]
