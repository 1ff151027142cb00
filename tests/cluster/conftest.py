"""What the cluster tests share: waiting for a condition, with a deadline (never a bare sleep),
and ``make_tokens``, one daemon's :class:`~briefd.cluster.tokens.ClusterTokens` on the
throwaway database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from briefd.cluster.tokens import ClusterTokens

Factory = Callable[..., ClusterTokens]


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


@pytest.fixture
def make_tokens(pg_url: str) -> Iterator[Factory]:
    """``make_tokens(daemon_id, **kw)``: one daemon's ClusterTokens, registered; closed after."""
    made: list[ClusterTokens] = []

    def make(daemon_id: str, **kw: Any) -> ClusterTokens:
        tokens = ClusterTokens(pg_url, daemon_id, timeout_s=5.0, **kw)
        tokens.register()
        made.append(tokens)
        return tokens

    yield make
    for tokens in made:
        tokens.close()
