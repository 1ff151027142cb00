"""Everything that decides *when* the next call may start, as one pure object.

The limiter actor owns the queue and the leases; :class:`Pacer` owns the rest
of what it learns: the adaptive window, the RPM/TPM budgets, the pause a
server's headers asked for, each stage's latency. It lives in the limiter's
``LimiterState`` (one per endpoint, :mod:`briefd.limits.lanes`), so a restarted
limiter keeps its pace. The clock is injectable (monotonic seconds) so it is
tested without sleeping.

With ``learn`` on (the local limiter's lanes), a budget that is not configured
is learned from the server's headers (:mod:`briefd.limits.learn`) and paced by
GCRA like a configured one; a configured ``rpm``/``tpm`` always wins. The
cluster's pacer does not learn (its database row keeps no learned budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from briefd.limits.gcra import Gcra
from briefd.limits.learn import Refill, relearn
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
    learn: bool = False  # learn the budgets not configured from the headers
    learned_rpm: Gcra | None = None  # requests, as the headers imply (rpm wins)
    learned_tpm: Gcra | None = None  # tokens, as the headers imply (tpm wins)
    requests_refill: Refill = field(default_factory=Refill)
    tokens_refill: Refill = field(default_factory=Refill)

    @classmethod
    def new(
        cls,
        ceiling: int,
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        learn: bool = False,
        latencies: Latencies | None = None,
    ) -> Pacer:
        return cls(
            window=Window(ceiling=ceiling, adaptive=adaptive),
            rpm=Gcra(rpm, clock=clock) if rpm else None,
            tpm=Gcra(tpm, clock=clock) if tpm else None,
            latencies=latencies if latencies is not None else Latencies(),
            clock=clock,
            learn=learn,
        )

    @property
    def requests(self) -> Gcra | None:
        """The requests budget in force: the configured one, else the learned one."""
        return self.rpm or self.learned_rpm

    @property
    def tokens(self) -> Gcra | None:
        """The tokens budget in force: the configured one, else the learned one."""
        return self.tpm or self.learned_tpm

    def delay(self, est_tokens: int) -> float:
        """Seconds until a call of ``est_tokens`` may start as far as the pause and budgets go
        (the window is the caller's: it counts leases)."""
        now = self.clock()
        short = 0.0  # the server has fewer tokens left than this call needs: wait for the reset
        left = self.tokens_left
        if left is not None and now < self.tokens_reset_at and est_tokens > left:
            short = self.tokens_reset_at - now
        requests, tokens = self.requests, self.tokens
        return max(
            self.pause_until - now,
            requests.wait(1) if requests else 0.0,
            tokens.wait(est_tokens) if tokens else 0.0,
            short,
            0.0,
        )

    def spend(self, est_tokens: int) -> None:
        """Charge the budgets for a call that starts now."""
        if self.tokens_left is not None:
            self.tokens_left -= est_tokens
        requests, tokens = self.requests, self.tokens
        if requests is not None:
            requests.take(1)
        if tokens is not None:
            tokens.take(est_tokens)

    def refund(self, est_tokens: int) -> None:
        """Give back what :meth:`spend` charged for a call that never started."""
        if self.tokens_left is not None:
            self.tokens_left += est_tokens
        requests, tokens = self.requests, self.tokens
        if requests is not None:
            requests.settle(1, 0)
        if tokens is not None:
            tokens.settle(est_tokens, 0)

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
        later_calls: int = 0,
        later_tokens: int = 0,
    ) -> None:
        """Learn from one call that ended ``elapsed_s`` after it was sent (``in_flight``
        counts it; ``later_calls`` of those in flight, estimated at ``later_tokens``, were
        sent after it)."""
        if outcome == "success":
            self.latencies.observe(stage, elapsed_s)
        elif outcome == "rate_limited":
            self.rate_limited += 1
        self.window.on_outcome(outcome, epoch, in_flight)
        tokens = self.tokens
        if tokens is not None and used_tokens is not None:
            tokens.settle(est_tokens, used_tokens)
        if limits is not None:
            self.obey(
                limits,
                sent_at=self.clock() - elapsed_s,
                later_calls=later_calls,
                later_tokens=later_tokens,
            )

    def obey(
        self,
        limits: RateLimits,
        *,
        sent_at: float | None = None,
        later_calls: int = 0,
        later_tokens: int = 0,
    ) -> None:
        """What the server says is left of its budgets, until their reset.

        No requests left (``remaining_requests`` 0) pauses every call until the
        reset; fewer tokens left than a call's estimate holds that call (and, the
        order being strict, those behind it) until the tokens' reset
        (:meth:`delay`), rather than sending it to be refused with a 429. The
        tokens left are counted down as calls start (:meth:`spend`).

        With ``learn``, a budget whose size the server sends too (``limit``) is
        learned and paced instead (:meth:`_learn`), and neither rule applies to
        it: waiting for the whole bucket to refill would waste most of it. The
        server's reading is taken as of when the call answered was sent
        (``sent_at``, on this pacer's clock; None: now), and did not count the
        calls sent after it (``later_calls``, ``later_tokens``): they are added.
        """
        now = self.clock()
        if self.learn:
            self._learn(limits, now if sent_at is None else sent_at, later_calls, later_tokens)
        if limits.remaining_tokens is not None and limits.reset_tokens_s:
            self.tokens_left = limits.remaining_tokens
            self.tokens_reset_at = now + limits.reset_tokens_s
        if self.learned_tpm is not None and self.tpm is None:
            self.tokens_left = None
        until = 0.0
        if limits.remaining_requests == 0 and limits.reset_requests_s and not self.learned_rpm:
            until = now + limits.reset_requests_s
        if limits.remaining_tokens == 0 and limits.reset_tokens_s and not self.learned_tpm:
            until = max(until, now + limits.reset_tokens_s)
        if until > self.pause_until:
            self.pause_until = until
            self.pauses += 1

    def _learn(
        self, limits: RateLimits, sent_at: float, later_calls: int, later_tokens: int
    ) -> None:
        """Learn each budget not configured from ``limits`` (:mod:`briefd.limits.learn`)."""
        if self.rpm is None:
            self.learned_rpm = relearn(
                self.learned_rpm,
                self.requests_refill,
                limit=limits.limit_requests,
                remaining=limits.remaining_requests,
                reset_s=limits.reset_requests_s,
                clock=self.clock,
                sent_at=sent_at,
                later=later_calls,
            )
        if self.tpm is None:
            self.learned_tpm = relearn(
                self.learned_tpm,
                self.tokens_refill,
                limit=limits.limit_tokens,
                remaining=limits.remaining_tokens,
                reset_s=limits.reset_tokens_s,
                clock=self.clock,
                sent_at=sent_at,
                later=later_tokens,
            )

    def lags(self) -> tuple[float, float]:
        """How far the requests' and tokens' clocks run ahead of now (s)."""
        requests, tokens = self.requests, self.tokens
        return (requests.lag() if requests else 0.0, tokens.lag() if tokens else 0.0)
