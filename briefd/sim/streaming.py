"""Streamed answers of the simulated server: Server-Sent Events as OpenAI sends them, paced.

A client's streaming code is judged by timing (time to first token, a stall cut
after seconds, a slow stream left alone), so the simulator streams over time, not
as one write: the headers at once, the first content chunk after the time to
first token (a fifth of the stage's latency, or a fault's ``first_token_s``),
then one chunk per word spread over the rest of the latency, or one every
``drip_s`` (a slow stream that never stalls). The body is HTTP/1.1 chunked, as
OpenAI's is, so the connection is kept alive after ``data: [DONE]``.

What is sent is OpenAI's shape (``chat.completion.chunk``): a first chunk with the
role, the content in pieces, a chunk with the finish reason, and with
``stream_options.include_usage`` a last chunk with empty ``choices`` and the usage
(every other chunk then carries ``"usage": null``). Faults: ``stall_after`` chunks
then silence until the client leaves; ``error_after`` chunks then an error event
(``data: {"error": ...}``) and the end of the body.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from briefd.sim.faults import Fault

FIRST_TOKEN_SHARE = 0.2
"""The share of a stage's latency spent before its first content chunk."""
_POLL_S = 0.05
_PIECE = re.compile(r"\s*\S+|\s+")


def pieces(content: str) -> list[str]:
    """``content`` cut into the pieces streamed, one word (with its leading space) each:
    about one chunk per token, as the simulator counts a word a token."""
    return _PIECE.findall(content) or [""]


def chunk_events(
    answer: dict[str, Any], options: Any
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """(the first chunk, the content pieces, the chunks after the content) of ``answer``."""
    choice = answer["choices"][0]
    head: dict[str, Any] = {k: answer[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    if with_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    tail: list[dict[str, Any]] = [chunk({}, choice["finish_reason"])]
    if with_usage:
        tail.append({**head, "choices": [], "usage": answer["usage"]})
    first = chunk({"role": "assistant", "content": ""}, None)
    return first, pieces(choice["message"]["content"]), tail


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    """One piece of an HTTP/1.1 chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


class StreamWriter:
    """One streamed answer: :meth:`run` writes it, paced, through the handler's ``write``.

    ``settle()`` is called just before the last bytes go out (the ledger counts the
    request done before the client could send its next one); ``peer_gone()`` says
    whether the client hung up (a stall waits for that).
    """

    def __init__(
        self,
        answer: dict[str, Any],
        options: Any,
        fault: Fault | None,
        latency_s: float,
        stop: threading.Event,
    ) -> None:
        self._first, self._pieces, self._tail = chunk_events(answer, options)
        self._head = {k: v for k, v in self._first.items() if k != "choices"}
        self._fault = fault
        self._stop = stop
        first_token = fault.first_token_s if fault is not None else None
        self._ttft_s = latency_s * FIRST_TOKEN_SHARE if first_token is None else first_token
        drip = fault.drip_s if fault is not None else None
        gaps = max(len(self._pieces) - 1, 1)  # the first piece at ttft, the last at the latency
        self._step_s = drip if drip is not None else latency_s * (1 - FIRST_TOKEN_SHARE) / gaps

    def _content(self, piece: str) -> bytes:
        choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        return _event({**self._head, "choices": [choice]})

    def run(
        self,
        write: Callable[[bytes], None],
        settle: Callable[[bool], None],
        peer_gone: Callable[[], bool],
    ) -> bool:
        """Write the stream; True when it ended with ``[DONE]``, False when cut short."""
        fault = self._fault
        stall_at = fault.stall_after if fault is not None else None
        error_at = fault.error_after if fault is not None else None
        write(_http_chunk(_event(self._first)))
        start = time.monotonic() + self._ttft_s  # piece i is due at start + i * step
        sent = 0
        while sent < len(self._pieces):
            if stall_at is not None and sent >= stall_at:
                return self._stall(peer_gone)
            if error_at is not None and sent >= error_at:
                return self._error(write, settle)
            if not self._sleep_until(start + sent * self._step_s, peer_gone):
                return False
            now = time.monotonic()
            batch: list[bytes] = []  # every piece already due goes in one write
            limit = min(x for x in (stall_at, error_at, len(self._pieces)) if x is not None)
            while sent < limit and start + sent * self._step_s <= now:
                batch.append(self._content(self._pieces[sent]))
                sent += 1
            if batch:
                write(_http_chunk(b"".join(batch)))
        if stall_at is not None and sent >= stall_at:
            return self._stall(peer_gone)
        if error_at is not None and sent >= error_at:
            return self._error(write, settle)
        rest = b"".join(_event(c) for c in self._tail) + b"data: [DONE]\n\n"
        settle(True)
        write(_http_chunk(rest) + b"0\r\n\r\n")
        return True

    def _sleep_until(self, due: float, peer_gone: Callable[[], bool]) -> bool:
        """Wait for ``due``; False if the server stops or the client leaves meanwhile (a
        client that cut a slow stream is seen within a poll, not at the next write)."""
        while (wait := due - time.monotonic()) > 0:
            if self._stop.wait(min(wait, _POLL_S)):
                return False
            if wait > _POLL_S and peer_gone():
                return False
        return True

    def _stall(self, peer_gone: Callable[[], bool]) -> bool:
        """Silence, the connection open, until the client leaves or the server stops."""
        while not self._stop.wait(_POLL_S) and not peer_gone():
            pass
        return False

    def _error(self, write: Callable[[bytes], None], settle: Callable[[bool], None]) -> bool:
        """An error event in the stream (as OpenAI sends one mid-answer), then the end."""
        error = {
            "error": {
                "message": "simulated error in the middle of the stream",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        settle(False)
        write(_http_chunk(_event(error)) + b"0\r\n\r\n")
        return False
