"""API keys: ``bfk_<id>_<secret>``, shown once, stored as an HMAC-SHA256 of the whole key.

The ``id`` (12 hex digits) is public: it names the key in ``briefd key list`` and
``briefd key revoke``, and finds its row. The secret is 32 random bytes
(:func:`secrets.token_urlsafe`), so a stolen table cannot be brute-forced back
to keys; the hash is still keyed with a server secret kept in the database
(:func:`server_secret`, one per journal, shared by a cluster's daemons), so a
copy of the keys table alone cannot even be checked against a guessed key. The
comparison is :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "bfk"
SCOPES = ("submit", "read", "cancel", "admin")
"""What a key may do: ``submit`` jobs, ``read`` them (status, result, list, events),
``cancel`` them, ``admin``: every tenant's jobs and ``/metrics``."""
_KEY = re.compile(r"^bfk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``token`` is shown once and never stored."""

    key_id: str
    token: str
    digest: str


def new_key(secret: bytes) -> NewKey:
    """A fresh random key and its stored digest."""
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, token, digest(secret, token))


def digest(secret: bytes, token: str) -> str:
    """The stored form of ``token``: hex HMAC-SHA256 keyed by the server secret."""
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()


def key_id_of(token: str) -> str | None:
    """The public id inside a well-formed key (None: not one of ours)."""
    m = _KEY.match(token)
    return m.group(1) if m else None


def matches(secret: bytes, token: str, stored: str) -> bool:
    """Whether ``token`` hashes to ``stored`` (constant time)."""
    return hmac.compare_digest(digest(secret, token), stored)


def parse_scopes(text: str) -> tuple[str, ...]:
    """``submit,read`` as a tuple in canonical order; ValueError naming an unknown scope."""
    given = [s.strip() for s in text.split(",") if s.strip()]
    if not given:
        raise ValueError(f"--scopes: at least one of {', '.join(SCOPES)}")
    for s in given:
        if s not in SCOPES:
            raise ValueError(f"--scopes: {s!r} is not one of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in given)


def new_server_secret() -> str:
    """A new server secret (hex), made once per journal."""
    return secrets.token_hex(32)
