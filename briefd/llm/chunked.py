"""A streamed body's bytes as they come: everything available in one read, not a chunk a read.

A streamed answer comes as an HTTP/1.1 chunked body, an HTTP chunk a token on
every server that streams (OpenAI, vLLM, llama.cpp, the simulator). Read through
urllib3 (``HTTPResponse.read1``), every read goes down five layers of Python
(urllib3's error catcher, ``http.client``'s ``_read1_chunked``, its chunk-size
``readline`` and CRLF ``_safe_read``) and returns *one* HTTP chunk, however many
have arrived. :class:`ChunkedBody` reads the response's own buffered socket
reader (``http.client``'s ``fp``, which holds whatever the header parse read
ahead) with one ``read1``, then, its read-ahead drained, the socket itself (``recv``:
the reader would only pass the call on, through a Python ``SocketIO``), and takes
every whole chunk in a read apart with a few ``bytes`` operations: a read costs one
call into the socket, whatever it brought.

Hand-written (about 100 lines): ``http.client`` and urllib3 decode chunks only one
at a time, and h11, the maintained sans-IO HTTP/1.1 parser, would have to own the
connection from its request line on. It is as lenient as ``http.client`` where that
is harmless (chunk extensions, LF without CR after a size or a trailer line) and
strict where a mistake would corrupt the next answer on the connection: a chunk's
data must end in CRLF, and bytes after the body's end make the connection unfit for
reuse (it is closed, not pooled).

When the body has ended (:attr:`ChunkedBody.ended`), :meth:`ChunkedBody.release`
closes the ``http.client`` response as it closes itself at a body's end (its
connection is then ready for the next request) and hands the connection back to
urllib3's pool, so kept-alive connections are reused exactly as before. A
response it cannot read so (not chunked, or not urllib3's over ``http.client``)
is read by :class:`Urllib3Body`, urllib3's own way.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from io import BufferedIOBase
from typing import Protocol

from urllib3.response import BaseHTTPResponse

READ = 65536
"""The most one read asks of the socket."""
MAX_LINE = 4096
"""The longest chunk-size or trailer line taken: a longer one is not HTTP."""


class BodyBroken(Exception):
    """The body ended before its last chunk, or its framing is not HTTP/1.1 chunked."""


class BodyReader(Protocol):
    """One response body's bytes (transfer coding removed, content coding kept)."""

    ended: bool
    """The body was read to its end: its connection may be reused."""

    def read(self) -> bytes:
        """The body's bytes available now (waiting for some), ``b""`` at its end."""
        ...

    def release(self) -> None:
        """Hand the connection back to its pool, if the body ended (else: nothing)."""
        ...


def body_reader(resp: BaseHTTPResponse) -> BodyReader:
    """The fastest reader for ``resp``'s body: :class:`ChunkedBody` where it can read it."""
    original: object = getattr(resp, "_original_response", None)
    if getattr(resp, "_fp", None) is not original or not isinstance(
        original, http.client.HTTPResponse
    ):
        return Urllib3Body(resp)  # not urllib3's own response over http.client
    fp = original.fp
    if original.chunked and original.chunk_left is None and fp is not None:
        return ChunkedBody(resp, original, fp)  # chunked, and nothing of it read yet
    return Urllib3Body(resp)


class Urllib3Body:
    """Any body, read by urllib3 (``read1``): a length, a close, a proxy's response."""

    def __init__(self, resp: BaseHTTPResponse) -> None:
        self._resp = resp
        self.ended = False

    def read(self) -> bytes:
        data = self._resp.read1(READ)
        if not data:
            self.ended = True  # urllib3 has handed the connection back itself
        return data

    def release(self) -> None:
        """Nothing: urllib3 released the connection when it read the body's end."""


class ChunkedBody:
    """A chunked body read from the response's buffered reader, then its socket (see the
    module's docstring)."""

    def __init__(
        self, resp: BaseHTTPResponse, original: http.client.HTTPResponse, fp: BufferedIOBase
    ) -> None:
        self._resp = resp
        self._original = original
        self._read1: Callable[[int], bytes] = fp.read1
        conn = resp.connection
        sock = getattr(conn, "sock", None) if conn is not None else None
        self._recv: Callable[[int], bytes] = (
            sock.recv if isinstance(sock, socket.socket) else fp.read1
        )
        self._left = 0  # bytes of the current chunk's data not yet read
        self._crlf = 0  # bytes of the CRLF after a chunk's data not yet read
        self._line = b""  # a size or trailer line begun in an earlier read
        self._trailers = False  # the last chunk came: trailer lines until a blank one
        self._reusable = True
        self.ended = False

    def read(self) -> bytes:
        while not self.ended:
            raw = self._read1(READ)
            if not raw:
                raise BodyBroken("the body ended before its last chunk")
            if len(raw) < READ:  # the reader's read-ahead is drained: the socket from now on
                self._read1 = self._recv
            data = self._take(raw)
            if data:
                return data
        return b""

    def _take(self, raw: bytes) -> bytes:
        """The chunk data in ``raw``, the framing around it dropped."""
        if self._left >= len(raw):  # all of it data of one chunk (a long one)
            self._left -= len(raw)
            self._crlf = 0 if self._left else 2
            return raw
        out: list[bytes] = []
        pos, size = 0, len(raw)
        while pos < size:
            if self._left:
                end = min(pos + self._left, size)
                out.append(raw[pos:end])
                self._left -= end - pos
                pos = end
                if not self._left:
                    self._crlf = 2
            elif self._crlf:
                if raw[pos] != (13 if self._crlf == 2 else 10):  # CR, then LF
                    raise BodyBroken("a chunk's data does not end in CRLF")
                self._crlf -= 1
                pos += 1
            else:
                pos = self._line_at(raw, pos)
                if self.ended:
                    if pos < size:  # bytes after the body: not this answer's, nor the next's
                        self._reusable = False
                    break
        return b"".join(out)

    def _line_at(self, raw: bytes, pos: int) -> int:
        """Take the size or trailer line at ``raw[pos:]``; where the bytes after it start."""
        end = raw.find(b"\n", pos)
        if end < 0:
            self._line += raw[pos:]
            if len(self._line) > MAX_LINE:
                raise BodyBroken("a chunk-size line is too long")
            return len(raw)
        line = (self._line + raw[pos:end]) if self._line else raw[pos:end]
        self._line = b""
        if len(line) > MAX_LINE:
            raise BodyBroken("a chunk-size line is too long")
        if self._trailers:
            if not line.rstrip(b"\r"):
                self.ended = True
            return end + 1
        try:
            left = int(line.split(b";", 1)[0], 16)  # spaces and a CR are stripped by int
        except ValueError:
            raise BodyBroken("a chunk-size line is not a hex number") from None
        if left < 0:
            raise BodyBroken("a chunk-size line is negative")
        if left == 0:
            self._trailers = True
        self._left = left
        return end + 1

    def release(self) -> None:
        """At the body's end: close the ``http.client`` response as it closes itself there
        (its connection can take the next request) and give the connection to the pool."""
        if not self.ended:
            return
        self._original.close()
        if self._reusable:
            self._resp.release_conn()
