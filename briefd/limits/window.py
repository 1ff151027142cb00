"""The adaptive window: how many calls may be in flight, learned from how calls end (AIMD).

A fixed cap is either too low (the server had room) or too high (it answers
429 and every stage backs off). The window W moves between 1 and the ceiling
(``BRIEFD_MAX_CONCURRENT``):

* a 429 or 503 halves it, at most once per *epoch*: every cut starts a new
  epoch, and a 429 from a call that started before the last cut says nothing
  new (those calls were sent under the old, larger window), so it cuts no more;
* a timeout or another 5xx multiplies it by 0.9 (slowness, not a refusal; it
  starts no epoch, so a refusal after it still halves);
* a success while at least W/2 calls are in flight adds 1/W (about one more
  call per window's worth of successes; a window that is not used does not grow);
* anything else (a 400, a bad document) leaves it alone.

W starts at the ceiling, so until the server pushes back the limiter behaves as
the fixed cap it replaces. With ``BRIEFD_ADAPTIVE=false`` W stays the ceiling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from briefd.messages.token import Outcome

DECREASE_ON_REFUSAL = 0.5
DECREASE_ON_OVERLOAD = 0.9


@dataclass
class Window:
    """W and its epoch; the limiter keeps one in its state (it survives a restart)."""

    ceiling: int
    adaptive: bool = True
    w: float = 0.0
    epoch: int = 0
    cuts: int = 0

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.w = float(self.ceiling) if self.w <= 0 else min(self.w, self.ceiling)

    @property
    def limit(self) -> int:
        """Calls allowed in flight now: W rounded down, at least 1."""
        if not self.adaptive:
            return self.ceiling
        return max(1, math.floor(self.w + 1e-9))

    def set_ceiling(self, ceiling: int) -> None:
        """A new ceiling (SIGHUP's ``SetCapacity``): W is clamped under it, never raised."""
        self.ceiling = max(1, ceiling)
        self.w = min(self.w, float(self.ceiling))
        if not self.adaptive:
            self.w = float(self.ceiling)

    def on_outcome(self, outcome: Outcome, started_epoch: int, in_flight: int) -> None:
        """Adjust W for one call that ended; ``in_flight`` counts that call too."""
        if not self.adaptive:
            return
        if outcome == "rate_limited":
            if started_epoch < self.epoch:
                return  # sent before the last cut: already answered for
            self.w = max(1.0, self.w * DECREASE_ON_REFUSAL)
            self.epoch += 1
            self.cuts += 1
        elif outcome == "overloaded":
            self.w = max(1.0, self.w * DECREASE_ON_OVERLOAD)
            self.cuts += 1
        elif outcome == "success" and in_flight >= self.w / 2:
            self.w = min(float(self.ceiling), self.w + 1.0 / self.w)
