"""An incremental Server-Sent Events parser: bytes as they arrive in, whole events out.

Hand-written (about 80 lines) after evaluating ``sseclient-py``, the maintained
library that reads from any iterable of bytes: it decodes each line as strict
UTF-8, so one bad byte from a server ends the stream with ``UnicodeDecodeError``
where briefd replaces it (the text is made encodable, never refused); it misses an
event whose lines end in CR when the blank line's CRLF starts the next read; it
builds each event by concatenating bytes; and it drops the ``error:`` lines
llama.cpp's server sends instead of ``data:``. openai-python and httpx-sse parse
SSE with their own few dozen lines for the same reason: the format is small and
the details are in the edge cases.

What it follows is the WHATWG event-stream algorithm: lines end in LF, CRLF or CR
(a CR at the end of one read may be the first half of a CRLF: it is held); a line
starting with ``:`` is a comment; ``data`` lines of one event are joined with LF;
a blank line dispatches the event (none when it had no data); an unknown field is
ignored, except llama.cpp's ``error``, which becomes an ``error`` event; a
leading UTF-8 BOM is dropped; a partial event at the end of the stream is not
dispatched. Bytes that are not UTF-8 are replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type (``message`` unless an ``event:`` line said) and data."""

    data: str
    event: str = "message"


class SSEParser:
    """Feed it bytes (:meth:`feed`) as they are read; it returns the events they complete."""

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the current line, not yet ended
        self._cr = False  # the last read ended in CR: an LF starting the next one is its pair
        self._data: list[str] = []
        self._event = ""
        self._started = False  # a BOM is dropped only at the very start

    def json_messages(self, chunk: bytes) -> tuple[bytes, int] | None:
        """``chunk``'s events as one JSON array, and how many, when it is nothing but whole
        ``data: {...}`` events and nothing is pending (else None, the parser untouched).

        The read a stream brings nearly every time (an event a token, LF line ends)
        taken in a few ``bytes`` operations instead of a line at a time: every LF in it
        is one of the blank-line pairs that end its events, so each event is one
        ``data:`` line, and each starts with ``{``. What else would follow the WHATWG
        algorithm differently (a CR, a comment, a field, an event cut between reads, a
        BOM at the start) is not taken here: :meth:`feed` reads it.
        """
        if (
            self._partial
            or self._data
            or self._event
            or self._cr
            or not chunk.startswith(b"data: {")
            or not chunk.endswith(b"\n\n")
            or b"\r" in chunk
        ):
            return None
        count = chunk.count(b"\n\ndata: {") + 1  # the boundaries inside, and the last end
        if chunk.count(b"\n") != 2 * count:
            return None
        self._started = True  # it began with "data": a BOM can no longer come
        return b"[" + chunk[6:-2].replace(b"\n\ndata: ", b",") + b"]", count

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._started and chunk:
            self._started = True
            chunk = chunk.removeprefix(_BOM)
        if self._cr:
            self._cr = False
            chunk = chunk.removeprefix(b"\n")  # the LF of a CRLF split across reads
        if chunk.endswith(b"\r"):
            self._cr = True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._partial.append(chunk)
            return []
        lines = chunk.split(b"\n")
        if self._partial:
            lines[0] = b"".join(self._partial) + lines[0]
        rest = lines.pop()
        self._partial = [rest] if rest else []
        events: list[SSEEvent] = []
        for line in lines:  # the common line (data: ...) inline: a stream is a line a token
            if line[:6] == b"data: ":
                self._data.append(line[6:].decode("utf-8", "replace"))
            elif not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            else:
                self._line(line)
        return events

    def _line(self, line: bytes) -> None:
        if line[:1] == b":":
            return  # a comment (a keep-alive, often)
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"error":  # llama.cpp's server says ``error: {...}``, not ``data:``
            self._event = "error"
            self._data.append(value.decode("utf-8", "replace"))
        # id and retry mean nothing to a one-shot call; other fields are ignored

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        if not data:
            self._event = ""
            return None
        self._data, self._event = [], ""
        return SSEEvent(data[0] if len(data) == 1 else "\n".join(data), event or "message")
