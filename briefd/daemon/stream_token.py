"""Short-lived, job-scoped tokens for a browser's ``EventSource``, which cannot send headers.

``POST /v1/jobs/{id}/stream-token`` (with the API token) returns one; it opens
that job's event stream, and nothing else, as ``?access_token=`` until it
expires (:data:`TTL_S`). It is ``v1.<job_id>.<expiry>.<nonce>.<signature>``:
an HMAC-SHA256 over the rest, keyed with a secret derived from the API token
(HMAC of a fixed label), so the API token never leaves the server in it, a
token cannot be widened to another job or a later time without the key, and
replacing the API token (its file) revokes every stream token. Daemons that
share a token file accept each other's stream tokens.

A stream already open when its token expires goes on (EventSource reconnects
with the same URL, so a page past the expiry asks for a new token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

TTL_S = 300
"""How long a stream token opens its job's stream."""
_LABEL = b"briefd stream-token key v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class StreamTokens:
    """Issues and checks stream tokens with a key derived from ``api_token``."""

    def __init__(
        self, api_token: str, *, ttl_s: float = TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hmac.new(api_token.encode(), _LABEL, hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, job_id: str) -> tuple[str, int]:
        """A token for ``job_id``'s stream and its expiry (Unix seconds)."""
        expires = int(self._clock() + self.ttl_s)
        body = f"v1.{job_id}.{expires}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(body)}", expires

    def check(self, token: str, job_id: str) -> str | None:
        """Why ``token`` does not open ``job_id``'s stream (None: it does). The reason never
        repeats the token."""
        body, _, signature = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[2].isdigit():
            return "not a stream token"
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return "not a stream token of this daemon"
        if parts[1] != job_id:
            return "a stream token for another job"
        if int(parts[2]) <= self._clock():
            return "the stream token has expired; ask for a new one"
        return None

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
