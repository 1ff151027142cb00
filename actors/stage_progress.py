"""A stage's progress inside a streamed call: :class:`StageProgress`, a few a second.

A streamed answer comes in a chunk per token, tens to hundreds a second; the
coordinator (and the event log, and every observer) needs to hear how far it has
come, not every chunk. So the stage actor hands its call a :class:`ProgressReporter`
(one per attempt) that the call invokes after each read (in the stage's own thread,
in the middle of the call), and that tells the coordinator at most once per
:data:`INTERVAL_S` (0.25 s: four a second), the first as soon as a token came.

``fraction`` is the tokens so far against the stage's ``max_tokens`` (or
:data:`DEFAULT_MAX_TOKENS` where the pipeline sets none), capped at :data:`CAP`:
a stream's length is not known until it ends, and only the stage's success is done.
``preview`` is the last line of the text so far, one line (control characters
escaped, secrets redacted: :func:`~briefd.llm.text.one_line`) and cut short.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from briefd.llm.stream import StreamProgress
from briefd.llm.text import one_line
from briefd.messages import Event, StageProgress

INTERVAL_S = 0.25
"""At most one StageProgress per stage per this many seconds."""
CAP = 0.95
"""A streaming stage's fraction stays below done: its end is not known until it comes."""
DEFAULT_MAX_TOKENS = 4096
"""The denominator of a stage without ``max_tokens``."""
PREVIEW_CHARS = 80


def preview_of(tail: str, chars: int = PREVIEW_CHARS) -> str:
    """The last non-blank line of ``tail``, one safe line of at most ``chars`` characters."""
    lines = [line for line in tail.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    line = one_line(last[-4 * chars :])
    return line if len(line) <= chars else "…" + line[-(chars - 1) :]


class ProgressReporter:
    """One attempt's coalesced progress reports (see the module's docstring)."""

    __slots__ = ("_attempt", "_job_id", "_last", "_max_tokens", "_report", "_stage", "sent")

    def __init__(
        self,
        job_id: str,
        stage: str,
        attempt: int,
        max_tokens: int | None,
        report: Callable[[Event], None],
    ) -> None:
        self._job_id = job_id
        self._stage = stage
        self._attempt = attempt
        self._max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        self._report = report
        self._last: float | None = None
        self.sent = 0  # reports told (for tests)

    def __call__(self, progress: StreamProgress) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < INTERVAL_S:
            return
        self._last = now
        self.sent += 1
        self._report(
            StageProgress(
                job_id=self._job_id,
                stage=self._stage,
                attempt=self._attempt,
                completion_tokens=progress.tokens,
                fraction=round(min(progress.tokens / self._max_tokens, CAP), 4),
                preview=preview_of(progress.tail(4 * PREVIEW_CHARS)),
            )
        )
