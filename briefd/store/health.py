"""What the daemon cannot write right now, so that ``/healthz`` can say it instead of hiding it.

A full disk or an unwritable folder does not stop the daemon: jobs end with an
``OUTPUT_ERROR``, journal writes wait to be made again. But an operator must
see it, so each failed write is recorded here by area (``journal``,
``files``), and cleared by the next write of that area that succeeds. Since an
idle daemon makes no writes, whoever asks may probe again (at most once per
``probe_every_s``) to notice that space came back.
"""

from __future__ import annotations

import threading
import time

from loguru import logger


class WriteHealth:
    """Thread-safe record of the last write failure per area (``journal``, ``files``)."""

    def __init__(self, probe_every_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}
        self._probed: dict[str, float] = {}
        self._probe_every_s = probe_every_s

    def failed(self, area: str, reason: str) -> None:
        """A write of ``area`` failed; logged once per outage (then on each new reason)."""
        with self._lock:
            before = self._problems.get(area)
            self._problems[area] = reason
        if before != reason:
            logger.error("cannot write the {}: {}", area, reason)

    def ok(self, area: str) -> None:
        """A write of ``area`` succeeded: whatever was wrong with it is over."""
        with self._lock:
            before = self._problems.pop(area, None)
        if before is not None:
            logger.info("the {} can be written again", area)

    def failing(self, area: str) -> bool:
        with self._lock:
            return area in self._problems

    def probe_due(self, area: str) -> bool:
        """True (and counted as done) when ``area`` is failing and was not probed just now."""
        now = time.monotonic()
        with self._lock:
            if area not in self._problems:
                return False
            if now - self._probed.get(area, -1e9) < self._probe_every_s:
                return False
            self._probed[area] = now
            return True

    def problem(self) -> str | None:
        """One line naming every area that cannot be written and why; None when all can."""
        with self._lock:
            if not self._problems:
                return None
            return "; ".join(f"{area}: {why}" for area, why in sorted(self._problems.items()))
