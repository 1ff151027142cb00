"""Keeping secrets out of everything briefd writes or prints.

One registry for the whole process: the API key (registered by the chat client that
sends it, and by logging set-up) and the daemon's bearer token (registered by the
daemon that makes it). :func:`redact` removes those, and anything shaped like a
credential even if nobody registered it:

- ``Bearer <token>`` (any case);
- OpenAI-style keys, ``sk-...``;
- the value of an ``Authorization``, ``api-key``, ``api_key`` or ``x-api-key``
  header or field, any case, as a header line (``Authorization: Basic ...``), as
  JSON or a Python dict (``"x-api-key": "..."``, ``'Authorization': '...'``), or
  as a query-like pair (``api_key=...``).

Why here and not only in the log sinks: an upstream server or proxy that echoes
the request's ``Authorization`` header in its error body puts the key into the
error message, and that message reaches result.json, the journal, the HTTP API
and the CLI's stderr, not just the log. So text that comes from upstream is
redacted where it becomes a message (``briefd.llm``), and the log sinks redact
every line again on the way out (``briefd.ops.logs``).
"""

from __future__ import annotations

import json
import re
import threading

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 6
"""Shorter registered values are ignored: redacting them would mangle ordinary text."""

_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{4,}")
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
# A credential header or field name, its separator (":" or "="), optional quotes (escaped
# or not), for an Authorization value its scheme word, then the credential itself: up to a
# quote, a backslash, whitespace or a character that ends a value in JSON, dicts or queries.
# A value already "[REDACTED]" is left as it is (see _redact_header).
_HEADER = re.compile(
    r"""(?ix)
    (?P<head>
        (?<![a-z0-9])
        (?: proxy-authorization | authorization | x-api-key | api[-_]?key )
        \\?["']? [ \t]* [:=] [ \t]* \[? [ \t]* \\?["']? [ \t]*
        (?: (?: bearer | basic | token | digest ) [ \t]+ )?+
    )
    (?P<value> [^\s"'\\,;&}\]]+ )
    """
)
_secrets: tuple[str, ...] = ()  # replaced whole, so redact() never sees it change
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never let ``value`` out (short values are ignored: they would over-match).

    Its JSON-escaped form is registered too, so it is found inside a JSON line.
    """
    global _secrets
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    with _lock:
        # Longest first, so a secret that contains another is replaced whole.
        _secrets = tuple(sorted({*_secrets, *forms}, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` without secrets: registered values, bearer tokens, ``sk-`` keys, and the
    values of credential headers and fields."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _HEADER.sub(_redact_header, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _OPENAI_KEY.sub("sk-" + REDACTED, text)


def _redact_header(m: re.Match[str]) -> str:
    value = m.group("value")
    if value.lstrip("[").startswith(REDACTED[1:-1]):
        return m.group(0)  # done already (a registered secret, or a second pass)
    return m.group("head") + REDACTED
