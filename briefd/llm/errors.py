"""Exceptions of one API call, split the way retries need them.

::

    CallError                 (code, message, hint, retryable)
    ├── TransportError        timeouts, refused or dropped connections   -> retried
    ├── TLSError              the TLS handshake failed (an untrusted certificate, say)
    │                                                                     -> not retried
    ├── StatusError           an HTTP error status                        -> 429/5xx retried,
    │                         but not a 429 ``insufficient_quota`` (QUOTA_EXCEEDED)
    ├── TruncatedError        finish_reason == "length"                   -> not retried
    ├── StreamError           an error sent in a streamed answer          -> retried, but not
    │                         one that says the quota is spent (QUOTA_EXCEEDED)
    ├── BadResponseError      200 but not a chat completion              -> not retried
    ├── InvalidOutputError    the document is not valid JSON / schema    -> not retried
    └── CallCancelled         the job was cancelled; the call was cut     -> not retried

Messages never contain the API key: they are built from status codes, URLs
without credentials and the server's own error text, and every message is passed
through :func:`~briefd.llm.text.one_line` as the error is made (redacted, control
characters escaped, lone surrogates replaced), so a server that echoes the
``Authorization`` header cannot put the key into a result, the journal or stderr.
"""

from __future__ import annotations

from briefd.llm.hints import QUOTA_CODES, status_hint
from briefd.llm.text import one_line
from briefd.messages import ErrorCode, PipelineError
from briefd.messages.token import RateLimits

__all__ = [
    "QUOTA_CODES",
    "BadResponseError",
    "CallCancelled",
    "CallError",
    "InvalidOutputError",
    "StatusError",
    "StreamError",
    "TLSError",
    "TransportError",
    "TruncatedError",
    "status_hint",
]


class CallError(Exception):
    """A stage's call failed. ``to_pipeline_error`` gives the reported shape."""

    code: ErrorCode = ErrorCode.BAD_RESPONSE
    retryable: bool = False
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = one_line(hint)

    def to_pipeline_error(self, stage: str) -> PipelineError:
        return PipelineError(stage=stage, code=self.code, message=self.message, hint=self.hint)


class TransportError(CallError):
    """The request did not get a complete answer: timeout, refused, reset."""

    retryable = True

    def __init__(self, message: str, *, code: ErrorCode, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class TLSError(CallError):
    """The TLS handshake failed: waiting does not make a certificate trusted."""

    code = ErrorCode.TLS_ERROR
    hint = (
        "the server's TLS certificate is not trusted (self-signed, an internal CA, or the "
        "wrong host name): put its CA certificate in a PEM file and point REQUESTS_CA_BUNDLE "
        "at it; briefd never turns verification off"
    )


class StatusError(CallError):
    """The server answered with an error status.

    ``upstream_code`` is the body's ``error.code`` (or ``error.type``) when it has one:
    a 429 that says ``insufficient_quota`` is an exhausted quota or unpaid bill, which
    no amount of waiting fixes, so it is QUOTA_EXCEEDED and not retried (and, not being
    RATE_LIMITED, it does not pause the other stages' grants either). Any other 4xx
    but 429 is HTTP_ERROR and not retried: the same request gets the same answer.
    The hint is chosen from the provider's own message (:func:`status_hint`); the
    keyword arguments after ``limits`` only sharpen it.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        retry_after: float | None = None,
        upstream_code: str | None = None,
        limits: RateLimits | None = None,
        endpoint_kind: str = "",
        key_env: str = "",
        model: str = "",
        prompt_chars: int | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.upstream_code = upstream_code
        self.limits = limits  # the server's rate-limit headers, for the limiter
        if upstream_code in QUOTA_CODES:
            self.code, self.retryable = ErrorCode.QUOTA_EXCEEDED, False
        elif status == 429:
            self.code, self.retryable = ErrorCode.RATE_LIMITED, True
        elif status in (500, 502, 503, 504):
            self.code, self.retryable = ErrorCode.SERVER_ERROR, True
        else:
            self.code, self.retryable = ErrorCode.HTTP_ERROR, False
        hint = status_hint(
            status,
            detail,
            upstream_code,
            endpoint_kind=endpoint_kind,
            key_env=key_env,
            model=model,
            prompt_chars=prompt_chars,
        )
        super().__init__(f"HTTP {status}: {detail}".rstrip(": "), hint=hint)


class StreamError(CallError):
    """The server sent an error in the middle of a streamed answer (after its 200).

    The status said yes, then the generation failed (an overloaded server, a worker
    that died): SERVER_ERROR, retried, unless ``upstream_code`` says the quota is spent.
    """

    def __init__(self, detail: str, upstream_code: str | None) -> None:
        self.upstream_code = upstream_code
        if upstream_code in QUOTA_CODES:
            self.code, self.retryable = ErrorCode.QUOTA_EXCEEDED, False
            hint = status_hint(429, detail, upstream_code)
        else:
            self.code, self.retryable = ErrorCode.SERVER_ERROR, True
            hint = "the server failed mid-answer; retried automatically"
        super().__init__(f"error in the streamed answer: {detail}".rstrip(": "), hint=hint)


class TruncatedError(CallError):
    """The model stopped at its token limit: the document would be cut off."""

    code = ErrorCode.TRUNCATED
    hint = "raise the stage's max_tokens in the pipeline file or shorten the prompt"


class BadResponseError(CallError):
    """A 200 answer that is not a chat completion."""

    code = ErrorCode.BAD_RESPONSE
    hint = "is BRIEFD_BASE_URL an OpenAI-compatible API?"


class InvalidOutputError(CallError):
    """The model's JSON does not parse or does not match the stage's schema."""

    code = ErrorCode.INVALID_JSON
    hint = "the model did not follow the JSON format; try a larger model or enable the re-ask"


class CallCancelled(CallError):
    """The job was cancelled: the call was not made, or was cut off mid-flight."""

    code = ErrorCode.CANCELLED

    def __init__(self) -> None:
        super().__init__("the call was abandoned: the job was cancelled", hint="")
