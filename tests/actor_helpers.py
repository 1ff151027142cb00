"""Helpers for tests that drive actors by message."""

from __future__ import annotations

import queue
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
