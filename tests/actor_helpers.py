"""Helpers for tests that drive actors by message."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from briefd.actors import CoordinatorActor
from briefd.config import Settings, load_pipeline
from briefd.messages import JobResult, JobSpec, RequestToken


class Inbox(pykka.ThreadingActor):
    """A stand-in requester (a stage, a coordinator) that forwards what it is told to a queue."""

    def __init__(self, out: queue.Queue[Any]) -> None:
        super().__init__()
        self.out = out

    def on_receive(self, message: Any) -> Any:
        self.out.put(message)
        return None


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` until true or ``timeout``; waits on an Event, not a sleep."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not check():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.01)
    return True


class _Recorder:
    """A limiter that grants nothing: it only keeps the RequestTokens it is told."""

    def __init__(self, requests: queue.Queue[RequestToken]) -> None:
        self.requests = requests

    def tell(self, message: Any) -> None:
        if isinstance(message, RequestToken):
            self.requests.put(message)


def coordinate(
    job: JobSpec, settings: Settings, admitted_at: float | None = None
) -> tuple[queue.Queue[JobResult], queue.Queue[RequestToken]]:
    """A coordinator of ``job`` whose limiter only records: its result (once it ends) and the
    requests for tokens it made. No call is granted, so only stages that end without one
    (a deadline passed) finish; the autouse fixture stops the actor."""
    requests: queue.Queue[RequestToken] = queue.Queue()
    done: queue.Queue[JobResult] = queue.Queue()
    CoordinatorActor.start(
        job=job,
        pipeline=load_pipeline(),
        settings=settings,
        base_url=settings.base_url or "",
        limiter=_Recorder(requests),
        on_done=done.put,
        admitted_at=admitted_at,
    )
    return done, requests
