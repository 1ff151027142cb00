"""The simulator as a llama.cpp server: one request at a time or a shared batch, ``timings``.

llama-cpp-python's server (the embedded default before issue 19) decodes one
request at a time: a second request waits inside its HTTP call until the first
is done, so a client's clock over the call counts that queue as work. llama.cpp's
servers say how long the work itself took, in a ``timings`` object of every
answer (and of a stream's last chunk): ``prompt_ms`` + ``predicted_ms``.

:class:`LlamaMode` gives the simulator these behaviours: ``serialize`` (one
request generates at a time, in arrival order as far as a lock gives it),
``batching`` (llama.cpp's server with slots on a CPU-bound machine: every request
is worked on at once, but they share one processor, so n requests each advance at
1/n of the speed, :class:`Sharing`) and ``timings`` (the answer carries the time
the request held the server: stretched by its batch-mates when batching, as
llama.cpp's are). :func:`llama_timings` builds the object; the streamed answer's
last chunk carries the same one. Batching shares a whole answer's generation (a
streamed answer's chunks are paced as without it). Answers with ``timings`` have
token counts that follow the stage's latency (:func:`batch_tokens`), so a
request's per-token times alone are the same whatever its stage, as on a real
server (what :mod:`briefd.worktime` relies on).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

_POLL_S = 0.05  # how often a request waiting for the slot checks whether the server stops
_PROMPT_WEIGHT = 0.1  # a prompt token costs about a tenth of a generated one (batched)
TOKENS_PER_UNIT = 40
"""A llama.cpp server's pace: a latency unit of the profile (7 for BRIEFING_MD) is this many
generated tokens, so every request has the same per-token time alone, as a real server has."""


def batch_tokens(units: float, prompt_tokens: int) -> int:
    """The tokens a llama.cpp server generates in ``units`` of alone-work after reading
    ``prompt_tokens``: what makes its ``timings`` those of a constant per-token pace."""
    return max(1, round(units * TOKENS_PER_UNIT - _PROMPT_WEIGHT * max(0, prompt_tokens)))


def llama_timings(prompt_tokens: int, completion_tokens: int, elapsed_s: float) -> dict[str, Any]:
    """llama.cpp's ``timings`` for an answer that took ``elapsed_s`` of the server's work.

    The time is split between prompt processing and generation by token counts (a
    prompt token weighted :data:`_PROMPT_WEIGHT`), so ``prompt_ms + predicted_ms`` is
    the whole time the request held the server, as llama.cpp reports it.
    """
    total_ms = max(0.0, elapsed_s * 1000)
    prompt_n, predicted_n = max(0, prompt_tokens), max(0, completion_tokens)
    weight = prompt_n * _PROMPT_WEIGHT + predicted_n
    prompt_ms = total_ms * (prompt_n * _PROMPT_WEIGHT / weight) if weight else 0.0
    predicted_ms = total_ms - prompt_ms

    def rates(n: int, ms: float) -> tuple[float, float]:
        per_token = ms / n if n else 0.0
        return round(per_token, 3), round(1000 / per_token, 3) if per_token else 0.0

    prompt_per_token, prompt_per_s = rates(prompt_n, prompt_ms)
    predicted_per_token, predicted_per_s = rates(predicted_n, predicted_ms)
    return {
        "prompt_n": prompt_n,
        "prompt_ms": round(prompt_ms, 3),
        "prompt_per_token_ms": prompt_per_token,
        "prompt_per_second": prompt_per_s,
        "predicted_n": predicted_n,
        "predicted_ms": round(predicted_ms, 3),
        "predicted_per_token_ms": predicted_per_token,
        "predicted_per_second": predicted_per_s,
    }


class Slot:
    """One request's hold on the server: timed from when it got the slot to its answer."""

    def __init__(self, lock: threading.Lock | None, timings: bool) -> None:
        self._lock = lock
        self._at = time.monotonic()
        self.reports = timings

    def timings(self, usage: dict[str, Any]) -> dict[str, Any]:
        """``timings`` for an answer with this ``usage``, the time measured to now."""
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        return llama_timings(
            prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0,
            time.monotonic() - self._at,
        )

    def release(self) -> None:
        """Let the next request work (once; a second call does nothing)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class Sharing:
    """Processor sharing: while n requests work, each advances at 1/n of the speed.

    A virtual clock counts the work one request would have done alone; it runs at
    1/n of real time while n work. A request of ``seconds`` ends when the clock has
    moved ``seconds`` past where it joined, so two equal requests started together
    both end after twice their time, as on a CPU-bound server decoding a batch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._virtual = 0.0
        self._at = time.monotonic()
        self._working = 0

    def _advance(self) -> None:
        now = time.monotonic()
        if self._working:
            self._virtual += (now - self._at) / self._working
        self._at = now

    def work(self, seconds: float, stop: threading.Event) -> bool:
        """Do ``seconds`` of alone-work, shared; False if the server stopped first."""
        with self._cond:
            self._advance()
            self._working += 1
            target = self._virtual + max(0.0, seconds)
            self._cond.notify_all()  # the others slow down from now: let them re-plan
            try:
                while True:
                    self._advance()
                    left = (target - self._virtual) * self._working
                    if left <= 1e-4:
                        return True
                    if stop.is_set():
                        return False
                    self._cond.wait(min(left, _POLL_S))
            finally:
                self._advance()
                self._working -= 1
                self._cond.notify_all()  # the others speed up from now


@dataclass
class LlamaMode:
    """How llama.cpp-like the simulator is: ``serialize`` requests or share them
    (``batching``), report ``timings``."""

    serialize: bool = False
    timings: bool = False
    batching: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sharing: Sharing = field(default_factory=Sharing, repr=False)

    def generate(self, seconds: float, stop: threading.Event) -> bool:
        """A whole answer's generation: shared while batching, else its own time; False
        if the server stopped first."""
        if self.batching:
            return self._sharing.work(seconds, stop)
        return not stop.wait(seconds)

    def take(self, stop: threading.Event) -> Slot | None:
        """The server's one slot while serializing (else at once); None if the server
        stopped first. The holder must :meth:`Slot.release` it."""
        if not self.serialize:
            return Slot(None, self.timings)
        while not self._lock.acquire(timeout=_POLL_S):
            if stop.is_set():
                return None
        return Slot(self._lock, self.timings)
