"""Where a stage's time went, and a speed-up figure that does not count waiting.

A stage's wall time (``StartStage`` to its end) mixes four things: waiting for an
execution token (briefd's limiter), the calls themselves, waiting out retry
backoffs, and, inside a call, whatever queue the server keeps. Only the calls are
work; a speed-up computed from wall times counts the waiting as work saved, and
read 1.57x against a server that serves one request at a time (issue 19).

:class:`StageClock` is the stage actor's stop-watch (one per stage, owned by its
thread, so no lock): per attempt ``queued_ms`` (``RequestToken`` told to
``TokenGranted``), ``call_ms`` (the token held: request sent to last byte),
``ttft_ms`` (the ``Completion``'s, for streamed calls) and, over the stage,
``backoff_ms`` (retry waits). ``server_ms`` is the server's own measure of the
calls where it gives one (llama.cpp's ``timings``), which excludes the time a
serializing server kept the request queued.

:func:`work_ms` and :func:`speedup_ratio` turn a stage's totals into the job's
figures: a stage's time is the sum of its calls' times, the server's measure
where it reported one for every call, else the client's; the speed-up is the sum
of those over the job's wall time, the critical-path estimate (what one stage at
a time would take, against what the job took). On a server that batches requests
a call's timings hold its batch-mates' work too: :func:`stage_work_ms` re-counts a
call that shared its server at the per-token times the server achieves alone
(:mod:`briefd.worktime`), and the job's speed-up sums those (``JobMetrics.work_ms``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from briefd.messages import ServerWork
from briefd.worktime import RatesOf, add, sequential_ms


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


@dataclass
class StageClock:
    """A stage's clocks, started and stopped by the stage actor's steps (one thread).

    Each ``*_at`` is the monotonic time an interval opened, None while closed; a
    total read while an interval is open (a deadline ending a stage in its queue or
    backoff) counts it up to now.
    """

    queued_ms: int = 0
    call_ms: int = 0
    backoff_ms: int = 0
    calls: int = 0
    server_sum_ms: int = 0
    server_calls: int = 0  # calls whose server reported its own time
    server_work: ServerWork | None = None  # their timings summed, while all went to one key
    work_calls: int = 0
    work_mixed: bool = False  # calls went to more than one endpoint:model
    ttft_ms: int | None = None  # the last call's
    last_call_ms: int = 0
    attempt_queued_ms: int = 0  # since the last call: this attempt's wait for its token
    _asked_at: float | None = None
    _call_at: float | None = None
    _backoff_at: float | None = None

    # -- the stage's steps -------------------------------------------------------------

    def asked(self) -> None:
        """A ``RequestToken`` was told."""
        if self._asked_at is None:
            self._asked_at = time.monotonic()

    def granted(self) -> None:
        """A ``TokenGranted`` arrived (used or given back: the wait was the same)."""
        if self._asked_at is not None:
            waited = _ms(time.monotonic() - self._asked_at)
            self._asked_at = None
            self.queued_ms += waited
            self.attempt_queued_ms += waited

    def call_started(self) -> None:
        """The token is held and the request is about to be sent."""
        self._call_at = time.monotonic()

    def call_ended(
        self,
        *,
        ttft_ms: int | None = None,
        server_ms: int | None = None,
        work: ServerWork | None = None,
        key: str = "",
    ) -> int:
        """The call ended (answered or failed); its ``call_ms``. ``work``: the server's
        timings of it, ``key`` the endpoint:model it went to."""
        took = 0 if self._call_at is None else _ms(time.monotonic() - self._call_at)
        self._call_at = None
        self.calls += 1
        self.call_ms += took
        self.last_call_ms = took
        self.ttft_ms = ttft_ms
        self.attempt_queued_ms = 0
        if server_ms is not None:
            self.server_calls += 1
            self.server_sum_ms += server_ms
        if work is not None:
            self.work_calls += 1
            previous = self.server_work
            self.work_mixed |= previous is not None and previous.key != key
            self.server_work = add(previous, work).model_copy(update={"key": key})
        return took

    def backoff_started(self) -> None:
        """A retry was scheduled (its timer set)."""
        self._backoff_at = time.monotonic()

    def resumed(self) -> None:
        """The retry's timer fired."""
        if self._backoff_at is not None:
            self.backoff_ms += _ms(time.monotonic() - self._backoff_at)
            self._backoff_at = None

    # -- what the events carry ---------------------------------------------------------

    @property
    def server_ms(self) -> int | None:
        """The calls' time as their server measured it, when it did for every call."""
        if self.calls and self.server_calls == self.calls:
            return self.server_sum_ms
        return None

    def totals(self) -> dict[str, Any]:
        """``StageSucceeded``/``StageFailed``'s clock fields; open intervals count to now."""
        now = time.monotonic()
        queued, call, backoff = self.queued_ms, self.call_ms, self.backoff_ms
        if self._asked_at is not None:
            queued += _ms(now - self._asked_at)
        if self._call_at is not None:
            call += _ms(now - self._call_at)
        if self._backoff_at is not None:
            backoff += _ms(now - self._backoff_at)
        return {
            "queued_ms": queued,
            "call_ms": call,
            "ttft_ms": self.ttft_ms,
            "backoff_ms": backoff,
            "server_ms": self.server_ms,
            "server_work": self.whole_work,
        }

    @property
    def whole_work(self) -> ServerWork | None:
        """The calls' timings summed, when every call had them and all went to one key."""
        if self.calls and self.work_calls == self.calls and not self.work_mixed:
            return self.server_work
        return None


def work_ms(call_ms: int, server_ms: int | None) -> int:
    """A stage's time for the speed-up: its calls, as the server measured them if it did."""
    return call_ms if server_ms is None else server_ms


def stage_work_ms(
    call_ms: int, server_ms: int | None, server_work: ServerWork | None, rates: RatesOf | None
) -> int:
    """A stage's work for the speed-up: its calls at the rates its server achieves for a
    call alone (:mod:`briefd.worktime`), where the server gave timings and a rate is
    known; else its server's time (:func:`work_ms`), else its client's."""
    if server_work is None or rates is None:
        return work_ms(call_ms, server_ms)
    return sequential_ms(server_work, rates(server_work.key))


def speedup_ratio(stages_ms: dict[str, int], total_ms: int) -> float:
    """Sum of the stages' call times / the job's wall time (0.0 for a job that took none).

    The critical-path estimate of what parallel stages saved: against a server that
    serves one request at a time it reads about 1.0, because no call overlapped any
    other's work; waits for a token or a backoff are not in a stage's call time.
    """
    return round(sum(stages_ms.values()) / total_ms, 3) if total_ms > 0 else 0.0
