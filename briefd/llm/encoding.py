"""Decoding a response body's ``Content-Encoding`` without letting it grow past a cap.

The client asks for exactly what it can decode (:data:`ACCEPT_ENCODING`), and reads
the body itself (``read1``, under the call's deadline), so it decodes itself too.
A few KiB of gzip can inflate to gigabytes: every ``decompress`` is given a
``max_length`` of what is left under the cap, so the *decoded* size, not just the
bytes on the wire, is bounded, and a bomb costs at most the cap in memory before it
is refused. A coding briefd never asked for is refused rather than parsed as JSON.
"""

from __future__ import annotations

import zlib

from briefd.llm.errors import BadResponseError, TransportError
from briefd.messages import ErrorCode

ACCEPT_ENCODING = "gzip, deflate"
"""The ``Accept-Encoding`` the client sends: exactly the codings :class:`BodyDecoder` reads."""

_GZIP = ("gzip", "x-gzip")


class BodyDecoder:
    """One body's decoder: :meth:`feed` each chunk read, then :meth:`finish`.

    Raises :class:`BadResponseError` for an unknown coding, corrupt data, or a decoded
    body larger than ``limit``; :class:`TransportError` when the compressed stream
    stops before its end (a connection cut, as far as anyone can tell).
    """

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._raw_deflate_ok = False
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        self._z: zlib._Decompress | None = None
        if not codings:
            return
        if codings == ["deflate"]:
            # HTTP's "deflate" is zlib-wrapped, but some servers send raw deflate.
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
            self._raw_deflate_ok = True
        elif len(codings) == 1 and codings[0] in _GZIP:
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            shown = (content_encoding or "")[:40]
            raise BadResponseError(
                f"the answer's Content-Encoding {shown!r} is not one briefd asked for "
                f"({ACCEPT_ENCODING})",
                hint="a proxy between briefd and the API may be re-encoding answers",
            )

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes of ``data`` (possibly none yet)."""
        if self._z is None:
            self._count(len(data))
            return data
        out: list[bytes] = []
        while data and not self._z.eof:
            try:
                piece = self._z.decompress(data, self._limit - self._size + 1)
            except zlib.error:
                if self._raw_deflate_ok and self._size == 0:
                    self._raw_deflate_ok = False
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise BadResponseError("the answer's compressed body is corrupt") from None
            self._raw_deflate_ok = False
            self._count(len(piece))
            out.append(piece)
            data = self._z.unconsumed_tail
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left once the body has been read whole."""
        if self._z is None:
            return b""
        try:
            rest = self._z.flush()
        except zlib.error:
            raise BadResponseError("the answer's compressed body is corrupt") from None
        self._count(len(rest))
        if not self._z.eof:
            raise TransportError(
                "connection lost while reading the answer: the compressed body ended early",
                code=ErrorCode.CONNECTION,
                hint="the server closed the connection; retried automatically",
            )
        return rest

    def _count(self, n: int) -> None:
        self._size += n
        if self._size > self._limit:
            raise BadResponseError(f"response larger than {self._limit} bytes (decoded)")
