"""Short-lived, job-scoped tokens for a browser's ``EventSource``, which cannot send headers.

``POST /v1/jobs/{id}/stream-token`` (with the API token or key) returns one; it
opens that job's event stream, and nothing else, as ``?access_token=`` until it
expires (:data:`TTL_S`). It is ``v2.<job>.<tenant>.<key>.<expiry>.<nonce>.<signature>``:

* ``<job>``: the job's *internal* key (:mod:`briefd.tenants.ids`), base64url
  (the key may hold a dot), so a token names one tenant's job and no other:
  tenant A's token for ``acme-q3`` is for ``a.acme-q3`` and cannot open
  tenant B's ``acme-q3``, whatever URL it is put in;
* ``<tenant>``, ``<key>``: the tenant and the public key id of the key that
  asked for it (``token`` for the token file): the path's id is read as that
  tenant's, and the streams it opens count against that key's
  ``max_streams_per_token``, so minting tokens does not lift a key's cap;
* the signature: HMAC-SHA256 over the rest, keyed with a secret derived from
  the API token (HMAC of a fixed label), so the API token never leaves the
  server in it, a token cannot be widened to another job, tenant, key or a
  later time without the key, and replacing the API token (its file) revokes
  every stream token. Daemons that share a token file accept each other's.

A stream already open when its token expires goes on (EventSource reconnects
with the same URL, so a page past the expiry asks for a new token). Revoking
the key that asked for a token revokes the token too: the stream endpoint checks
that key when a stream opens (:func:`briefd.tenants.api.key_live`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from briefd.tenants.auth import BUILTIN_KEY_ID
from briefd.tenants.ids import DEFAULT_TENANT

TTL_S = 300
"""How long a stream token opens its job's stream."""
_LABEL = b"briefd stream-token key v1"
_VERSION = "v2"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


@dataclass(frozen=True)
class Grant:
    """What a valid stream token opens: ``job`` (an internal key), for the caller of
    ``tenant`` with key ``key_id``."""

    job: str
    tenant: str
    key_id: str
    expires: int


class StreamTokens:
    """Issues and checks stream tokens with a key derived from ``api_token``."""

    def __init__(
        self, api_token: str, *, ttl_s: float = TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hmac.new(api_token.encode(), _LABEL, hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(
        self, job_id: str, *, tenant: str = DEFAULT_TENANT, key_id: str = BUILTIN_KEY_ID
    ) -> tuple[str, int]:
        """A token for the stream of ``job_id`` (the internal key), asked by key ``key_id``
        of ``tenant``, and its expiry (Unix seconds)."""
        expires = int(self._clock() + self.ttl_s)
        job = _b64(job_id.encode())
        body = f"{_VERSION}.{job}.{tenant}.{key_id}.{expires}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(body)}", expires

    def grant(self, token: str) -> Grant | str:
        """What ``token`` opens, or why it opens nothing. The reason never repeats the token."""
        body, _, signature = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 6 or parts[0] != _VERSION or not parts[4].isdigit():
            return "not a stream token"
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return "not a stream token of this daemon"
        job = _unb64(parts[1])
        if job is None:  # signed by us, so not expected: refuse all the same
            return "not a stream token"
        if int(parts[4]) <= self._clock():
            return "the stream token has expired; ask for a new one"
        return Grant(job, parts[2], parts[3], int(parts[4]))

    def check(self, token: str, job_id: str) -> str | None:
        """Why ``token`` does not open ``job_id``'s stream (None: it does)."""
        grant = self.grant(token)
        if isinstance(grant, str):
            return grant
        return None if grant.job == job_id else "a stream token for another job"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
