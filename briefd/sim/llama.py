"""The simulator as a llama.cpp server: one request at a time, and ``timings`` in answers.

llama-cpp-python's server (the embedded default before issue 19) decodes one
request at a time: a second request waits inside its HTTP call until the first
is done, so a client's clock over the call counts that queue as work. llama.cpp's
servers say how long the work itself took, in a ``timings`` object of every
answer (and of a stream's last chunk): ``prompt_ms`` + ``predicted_ms``.

:class:`LlamaMode` gives the simulator both behaviours, apart or together:
``serialize`` (one request generates at a time, in arrival order as far as a lock
gives it) and ``timings`` (the answer carries the time the request held the
server). :func:`llama_timings` builds the object; the streamed answer's last chunk
carries the same one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

_POLL_S = 0.05  # how often a request waiting for the slot checks whether the server stops
_PROMPT_WEIGHT = 0.1  # a prompt token costs about a tenth of a generated one (batched)


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


@dataclass
class LlamaMode:
    """How llama.cpp-like the simulator is: ``serialize`` requests, report ``timings``."""

    serialize: bool = False
    timings: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, stop: threading.Event) -> Slot | None:
        """The server's one slot while serializing (else at once); None if the server
        stopped first. The holder must :meth:`Slot.release` it."""
        if not self.serialize:
            return Slot(None, self.timings)
        while not self._lock.acquire(timeout=_POLL_S):
            if stop.is_set():
                return None
        return Slot(self._lock, self.timings)
