"""What a chat-completions answer holds: its text, why it stopped, what it cost.

Split from :mod:`briefd.llm.call` (the wire) so that each stays small. Upstream
text enters briefd here, so it is made safe here: the completion's text is
made encodable (:mod:`briefd.llm.text`), and an error message quoting the
server is one line and cut short, and so is the name of the model the server
says answered (``model``: the name to price by, often a dated snapshot). A
malformed ``usage`` counts as zero tokens and the document is kept: the tokens
were spent either way. Its details (cached prompt tokens, reasoning tokens) are
parts of the prompt and completion counts, so they are kept within them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from briefd.llm.errors import QUOTA_CODES, BadResponseError, TruncatedError
from briefd.llm.text import encodable, one_line
from briefd.messages import ServerWork, Usage
from briefd.messages.token import RateLimits
from briefd.worktime import timing_of

_DETAIL_CHARS = 300
_MODEL_CHARS = 200  # longer than any real model name; a longer one is cut, not refused
_MAX_TOKENS_COUNT = 2**53  # larger "token counts" are nonsense, and not exact as JSON numbers


@dataclass(frozen=True)
class Completion:
    """What the model said, why it stopped, and what it cost."""

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    limits: RateLimits | None = None  # the server's rate-limit headers, for the limiter
    model: str | None = None  # the model the server says answered (a dated name, often)
    ttft_ms: int | None = None  # streamed: request sent to the first content token
    server_ms: int | None = None  # the server's own measure of the call (llama.cpp's timings)
    work: ServerWork | None = None  # those timings' tokens and times (briefd.worktime)


def _loads(raw: bytes) -> Any:
    """JSON from the wire; bytes that are not UTF-8 are replaced rather than refused."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        return json.loads(raw.decode("utf-8", "replace"))


def error_detail(raw: bytes) -> tuple[str, str | None]:
    """The server's own error message (redacted, one line, cut short), and its error code.

    The code is OpenAI's ``error.code`` or ``error.type``, preferring one that says the
    quota is exhausted.
    """
    try:
        data = _loads(raw)
    except (ValueError, RecursionError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        codes = [c for c in (err.get("code"), err.get("type")) if isinstance(c, str)]
        code = next((c for c in codes if c in QUOTA_CODES), codes[0] if codes else None)
        message = err.get("message")
        if isinstance(message, str):
            return one_line(message.strip(), _DETAIL_CHARS), code
        return one_line(raw.decode("utf-8", "replace").strip(), _DETAIL_CHARS), code
    if isinstance(err, str):
        return one_line(err.strip(), _DETAIL_CHARS), None
    return one_line(raw.decode("utf-8", "replace").strip(), _DETAIL_CHARS), None


def _token_count(value: Any) -> int:
    """A usage count, or 0 when it is not a non-negative integer (floats like 12.0 pass)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= _MAX_TOKENS_COUNT else 0


def _detail(usage: dict[str, Any], section: str, key: str, whole: int) -> int:
    """``usage[section][key]`` (OpenAI's ``*_tokens_details``), at most ``whole``; else 0."""
    details = usage.get(section)
    return min(_token_count(details.get(key)), whole) if isinstance(details, dict) else 0


def _usage(value: Any) -> Usage:
    """What the call cost, as far as the server said; malformed parts count zero.

    Cached tokens are of the prompt's and reasoning tokens of the completion's, so
    neither is taken above its whole: a server's nonsense never makes a negative price.
    """
    if not isinstance(value, dict):
        return Usage()
    prompt = _token_count(value.get("prompt_tokens"))
    completion = _token_count(value.get("completion_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=_detail(value, "prompt_tokens_details", "cached_tokens", prompt),
        reasoning_tokens=_detail(
            value, "completion_tokens_details", "reasoning_tokens", completion
        ),
    )


def _model(value: Any) -> str | None:
    """The model the server says answered, made safe (one line, redacted, cut); else None."""
    if not isinstance(value, str):
        return None
    return one_line(value.strip(), _MODEL_CHARS) or None


def server_ms_of(data: Any) -> int | None:
    """The call's time as the server measured it, where it says: llama.cpp's ``timings``
    (``prompt_ms`` + ``predicted_ms``, in a whole answer or a stream's last chunk); else None.

    A server that serves one request at a time queues the others inside the call, so the
    client's clock over-counts work there; this is what the speed-up figure prefers.
    """
    timings = data.get("timings") if isinstance(data, dict) else None
    if not isinstance(timings, dict):
        return None
    parts = [timings.get("prompt_ms"), timings.get("predicted_ms")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in parts):
        return None
    total = sum(float(v) for v in parts if isinstance(v, int | float))
    return round(total) if 0 <= total < 1e9 else None


def parse_completion(raw: bytes) -> Completion:
    try:
        data = _loads(raw)
        choice = data["choices"][0]
        text = choice["message"]["content"]
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        raise BadResponseError("the answer is not a chat completion") from None
    if not isinstance(text, str):
        raise BadResponseError("the answer has no text content")
    usage = _usage(data.get("usage"))
    if finish == "length":
        raise TruncatedError(
            f"the model stopped at its token limit after {usage.completion_tokens} tokens"
        )
    finish_reason = encodable(finish) if isinstance(finish, str) else None
    return Completion(
        text=encodable(text),
        finish_reason=finish_reason,
        usage=usage,
        model=_model(data.get("model")),
        server_ms=server_ms_of(data),
        work=timing_of(data),
    )
