"""Everything that decides *when* the next call may start, as one pure object.

The limiter actor owns the queue and the leases; :class:`Pacer` owns the rest
of what it learns: the adaptive window, the RPM/TPM budgets, the pause a
server's headers asked for, each stage's latency. It lives in the limiter's
``LimiterState``, so a restarted limiter keeps its pace. The clock is
injectable (monotonic seconds) so it is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from briefd.limits.gcra import Gcra
from briefd.limits.order import Latencies
from briefd.limits.window import Window
from briefd.messages.token import Outcome, RateLimits


@dataclass
class Pacer:
    """The window, the budgets and the server's pause, with the figures they produce."""

    window: Window
    rpm: Gcra | None = None
    tpm: Gcra | None = None
    latencies: Latencies = field(default_factory=Latencies)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    pause_until: float = 0.0  # a server said a budget is spent: no call before
    pauses: int = 0
    rate_limited: int = 0
    tokens_left: int | None = None  # the server's remaining tokens, less calls started since
    tokens_reset_at: float = 0.0  # when the server said they refill (clock time)

    @classmethod
    def new(
        cls,
        ceiling: int,
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Pacer:
        return cls(
            window=Window(ceiling=ceiling, adaptive=adaptive),
            rpm=Gcra(rpm, clock=clock) if rpm else None,
            tpm=Gcra(tpm, clock=clock) if tpm else None,
            clock=clock,
        )

    def delay(self, est_tokens: int) -> float:
        """Seconds until a call of ``est_tokens`` may start as far as the pause and budgets go
        (the window is the caller's: it counts leases)."""
        now = self.clock()
        short = 0.0  # the server has fewer tokens left than this call needs: wait for the reset
        left = self.tokens_left
        if left is not None and now < self.tokens_reset_at and est_tokens > left:
            short = self.tokens_reset_at - now
        return max(
            self.pause_until - now,
            self.rpm.wait(1) if self.rpm else 0.0,
            self.tpm.wait(est_tokens) if self.tpm else 0.0,
            short,
            0.0,
        )

    def spend(self, est_tokens: int) -> None:
        """Charge the budgets for a call that starts now."""
        if self.tokens_left is not None:
            self.tokens_left -= est_tokens
        if self.rpm is not None:
            self.rpm.take(1)
        if self.tpm is not None:
            self.tpm.take(est_tokens)

    def refund(self, est_tokens: int) -> None:
        """Give back what :meth:`spend` charged for a call that never started."""
        if self.tokens_left is not None:
            self.tokens_left += est_tokens
        if self.rpm is not None:
            self.rpm.settle(1, 0)
        if self.tpm is not None:
            self.tpm.settle(est_tokens, 0)

    def ended(
        self,
        *,
        stage: str,
        outcome: Outcome,
        epoch: int,
        in_flight: int,
        elapsed_s: float,
        est_tokens: int,
        used_tokens: int | None,
        limits: RateLimits | None,
    ) -> None:
        """Learn from one call that ended (``in_flight`` counts it)."""
        if outcome == "success":
            self.latencies.observe(stage, elapsed_s)
        elif outcome == "rate_limited":
            self.rate_limited += 1
        self.window.on_outcome(outcome, epoch, in_flight)
        if self.tpm is not None and used_tokens is not None:
            self.tpm.settle(est_tokens, used_tokens)
        if limits is not None:
            self.obey(limits)

    def obey(self, limits: RateLimits) -> None:
        """What the server says is left of its budgets, until their reset.

        No requests left (``remaining_requests`` 0) pauses every call until the
        reset; fewer tokens left than a call's estimate holds that call (and, the
        order being strict, those behind it) until the tokens' reset
        (:meth:`delay`), rather than sending it to be refused with a 429. The
        tokens left are counted down as calls start (:meth:`spend`).
        """
        now = self.clock()
        if limits.remaining_tokens is not None and limits.reset_tokens_s:
            self.tokens_left = limits.remaining_tokens
            self.tokens_reset_at = now + limits.reset_tokens_s
        until = 0.0
        if limits.remaining_requests == 0 and limits.reset_requests_s:
            until = now + limits.reset_requests_s
        if limits.remaining_tokens == 0 and limits.reset_tokens_s:
            until = max(until, now + limits.reset_tokens_s)
        if until > self.pause_until:
            self.pause_until = until
            self.pauses += 1

    def lags(self) -> tuple[float, float]:
        """How far the RPM and TPM clocks run ahead of now (s)."""
        return (self.rpm.lag() if self.rpm else 0.0, self.tpm.lag() if self.tpm else 0.0)
