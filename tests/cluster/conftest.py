"""What the cluster tests share: waiting for a condition, with a deadline (never a bare sleep)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest


def until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Wait for ``condition()`` to be truthy (checked every 20 ms) until a deadline."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        pause.wait(0.02)
    pytest.fail(f"not within {timeout_s}s: {what}")
