"""Text that crosses from the upstream server into briefd, made safe where it enters.

Three things can go wrong with a server's (or a model's) text downstream, long after
the call that brought it, so each is handled here, at the boundary:

- **Lone surrogates.** JSON may carry ``"\\ud800"``, and ``json.loads`` turns it (and
  surrogates encoded as raw UTF-8 bytes) into a ``str`` that no UTF-8 encoder
  accepts: the journal, result.json and the HTTP API would all fail on a document
  that was paid for. :func:`encodable` replaces every lone surrogate with U+FFFD;
  a high surrogate followed by a low one is joined into the character the pair
  spells, so valid astral characters (emoji) survive unchanged. :func:`scrub`
  does the same at any depth of a parsed JSON document, keys included.
- **Secrets.** A server or proxy that echoes the request's ``Authorization`` header
  in an error body would put the key into the error message, and from there into
  every output. :func:`one_line` redacts (:mod:`briefd.redaction`).
- **Control characters.** An error message is reported as one line (result.json,
  the CLI's stderr, the console): escape sequences, CR and LF in a server's text
  could drive a terminal or forge a log line. :func:`one_line` turns each run of
  line breaks and tabs (with the blanks around it) into one space, as a reader
  would (a provider's multi-line message was printed with literal ``\\n``), and
  escapes every other control character (``\\u001b``) so it stays visible but inert.

Documents themselves are only made encodable: their content (escape sequences
included) belongs to the client, and the event log never prints it.
"""

from __future__ import annotations

import re
from typing import Any

from briefd.ops.eventlog import escape_control
from briefd.redaction import redact

_SURROGATE = re.compile("[\ud800-\udfff]")
_BREAKS = re.compile("[ ]*[\t\n\v\f\r\x1c-\x1e\x85\u2028\u2029]+[ ]*")
"""A run of line breaks and tabs, and the blanks around it: one space in a one-line message."""


def encodable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, surrogate pairs joined."""
    if _SURROGATE.search(text) is None:
        return text
    # UTF-16 is the one codec where a surrogate pair means its character: the round
    # trip joins high+low pairs and turns anything left alone into U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def scrub(value: Any) -> Any:
    """A parsed JSON value with :func:`encodable` applied to every string, keys included."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {encodable(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    return value


def one_line(text: str, limit: int | None = None) -> str:
    """Upstream text fit for a message: encodable, redacted, line breaks made spaces, other
    control characters escaped, cut to ``limit`` characters (after redaction, so a cut never
    leaves part of a key).

    Redaction sees the text with its line breaks (a header line ``Authorization: ...``
    ends at one), and breaks become spaces only after it.
    """
    out = escape_control(_BREAKS.sub(" ", redact(encodable(text))))
    return out if limit is None else out[:limit]
