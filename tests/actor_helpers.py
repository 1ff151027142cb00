"""Helpers for tests that drive actors by message."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka


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
