"""The event log, schema v1: one JSON object per line, written by loguru, read by the console.

A line is an *envelope* (``v``, ``ts``, ``level``, ``event``, ``job_id``,
``stage``, ``msg``) around the fields of one :class:`~briefd.messages.Event`,
exactly as the message model dumps them, except for content: a model's or a
client's text (``document``, ``documents``, ``prompts``,
``procurement_metrics``) is replaced by a :func:`digest` (size and SHA-256).
The operations log says *that* a document was made and how big it is, never
what it says: documents are large, and they belong to the client, not to the
people who watch the service.

Lines are encoded with ``ensure_ascii``: every control character, escape
sequence and non-ASCII character in a value is a JSON escape, so no value can
break a line, forge another one, or drive a terminal. Readers ignore lines
whose ``v`` they do not know and events they do not know, so the schema can
grow. ``docs/events.md`` is generated from the message models
(``python -m briefd.ops.eventdocs``), and :func:`to_message` parses a line
back through them, so the log, the docs and the models cannot drift apart.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from briefd.messages import AnyMessage, Event, parse_message

SCHEMA_VERSION = 1
LOG_EVENT = "log"
"""The ``event`` of a line that is a plain log message, not a message model."""

ENVELOPE = ("v", "ts", "level", "event", "job_id", "stage", "msg")
RESERVED = frozenset({"v", "level", "event", "msg"})
"""Envelope names no event model may use as a field (``ts``, ``job_id``, ``stage`` are shared)."""

CONTENT_KEYS = frozenset({"document", "documents", "prompt", "prompts", "procurement_metrics"})
"""Fields holding model or client text: logged as digests, at any depth."""
PER_KEY_CONTENT = frozenset({"documents", "prompts"})
"""Content fields that are objects of stage name -> content: each value is digested."""

DEBUG_EVENTS = frozenset({"TokenGranted", "TokenReleased", "ProgressChanged"})
WARNING_EVENTS = frozenset({"StageFailed", "StageRetrying", "StageFellBack", "RateLimitCooldown"})

# C0 and C1 controls, DEL, line/paragraph separators and bidi overrides: anything that can
# move a terminal's cursor, end a line or reorder what a reader sees.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def level_for(event_type: str) -> str:
    """The loguru level an event is logged at: chatter DEBUG, trouble WARNING, the rest INFO."""
    if event_type in DEBUG_EVENTS:
        return "DEBUG"
    if event_type in WARNING_EVENTS:
        return "WARNING"
    return "INFO"


def escape_control(text: str) -> str:
    """``text`` with control characters made visible (``\\n``, ``\\u001b``), for one-line output."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"), text)


@functools.cache
def event_classes() -> dict[str, type[Event]]:
    """Every event in the :data:`AnyMessage` union by ``type``: new events join by being there."""
    union = typing.get_args(AnyMessage)[0]
    found: dict[str, type[Event]] = {}
    for cls in typing.get_args(union):
        if isinstance(cls, type) and issubclass(cls, Event):
            found[cls.model_fields["type"].default] = cls
    return found


# -- writing -----------------------------------------------------------------------


def digest(content: Any) -> dict[str, Any] | None:
    """Size and SHA-256 of a document: text as UTF-8, anything else as canonical JSON."""
    if content is None:
        return None
    if isinstance(content, str):
        kind, raw = "text", content.encode("utf-8", "replace")
    else:
        kind = "json"
        raw = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()
    return {"kind": kind, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _strip_content(data: Any) -> Any:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in PER_KEY_CONTENT and isinstance(value, dict):
                out[key] = {k: digest(v) for k, v in value.items()}
            elif key in CONTENT_KEYS:
                out[key] = digest(value)
            else:
                out[key] = _strip_content(value)
        return out
    if isinstance(data, list):
        return [_strip_content(v) for v in data]
    return data


def event_payload(event: Event) -> dict[str, Any]:
    """An event as a v1 line without ``level`` and ``msg`` (the logger adds those)."""
    fields = _strip_content(event.model_dump(mode="json", exclude={"type", "ts"}))
    clash = RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"{event.type}: fields {sorted(clash)} collide with the log envelope")
    return {
        "v": SCHEMA_VERSION,
        "ts": event.ts,
        "event": event.type,
        "job_id": fields.pop("job_id", None),
        "stage": fields.pop("stage", None),
        **fields,
    }


def line_of(payload: dict[str, Any], level: str, msg: str) -> dict[str, Any]:
    """The full line: the envelope in its documented order, then fields, then ``msg``."""
    return {
        "v": payload["v"],
        "ts": payload["ts"],
        "level": level,
        **{k: v for k, v in payload.items() if k not in ("v", "ts")},
        "msg": msg,
    }


def dumps_line(line: dict[str, Any]) -> str:
    """One line of pure printable ASCII: every control or non-ASCII character escaped."""
    return json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str)


# -- reading -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One parsed v1 line. ``data`` is the whole object (envelope included)."""

    ts: float
    event: str
    job_id: str | None
    stage: str | None
    level: str
    data: dict[str, Any]


_DECODER = json.JSONDecoder()  # json.loads less its per-call set-up: the console parses every line


def parse_line(line: str | bytes) -> Record | None:
    """A v1 line as a :class:`Record`; None for anything else (garbage, other versions)."""
    try:
        obj = _DECODER.decode(line if isinstance(line, str) else line.decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("v") != SCHEMA_VERSION:
        return None
    event, ts = obj.get("event"), obj.get("ts")
    if not isinstance(event, str) or not isinstance(ts, int | float):
        return None
    job_id, stage, level = obj.get("job_id"), obj.get("stage"), obj.get("level")
    return Record(
        ts=float(ts),
        event=event,
        job_id=job_id if isinstance(job_id, str) else None,
        stage=stage if isinstance(stage, str) else None,
        level=level if isinstance(level, str) else "INFO",
        data=obj,
    )


def to_message(record: Record) -> Event:
    """Parse a record back into its message model (content fields hold digests).

    Raises ``ValueError`` (pydantic's ``ValidationError``) when the line does not fit
    the model: an unknown event, a missing field, or one the model does not have.
    """
    cls = event_classes().get(record.event)
    if cls is None:
        raise ValueError(f"{record.event}: not an event of this briefd")
    data = {k: v for k, v in record.data.items() if k not in RESERVED}
    for key in ("job_id", "stage"):
        if key not in cls.model_fields and data.get(key) is None:
            data.pop(key, None)
    message = parse_message({**data, "type": record.event})
    assert isinstance(message, Event)
    return message


@dataclass
class ReadStats:
    """What a reader saw: lines read, records kept, lines ignored, half-written last lines."""

    lines: int = 0
    records: int = 0
    ignored: int = 0
    partial: int = 0


class LogFollower:
    """Reads the new complete lines of a log file, across rotation and truncation.

    Each :meth:`read` returns what was appended since the last call, so a console
    reads 100,000 lines once and then only the tail. A half-written last line is
    kept until its newline arrives. When the path names another file (loguru
    rotated it: renamed the old one, opened a new one), the old file is read to
    its end first, then the new one from its start; when the file shrinks (truncated
    in place), reading starts over. A missing file is waited for.
    """

    CHUNK = 1 << 20

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.stats = ReadStats()
        self._fh: BinaryIO | None = None
        self._ino: int | None = None
        self._buf = b""

    def read(self) -> list[Record]:
        """Every record completed since the last call (possibly none)."""
        out: list[Record] = []
        if self._fh is None and not self._open():
            return out
        while True:
            assert self._fh is not None
            chunk = self._fh.read(self.CHUNK)
            if chunk:
                self._take(chunk, out)
                continue
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return out  # rotated, the new file not made yet: keep the old one open
            if st.st_ino != self._ino:
                self._drop_partial()
                self._fh.close()
                if not self._open():
                    return out
            elif st.st_size < self._fh.tell():
                self._drop_partial()
                self._fh.seek(0)
            else:
                return out

    def close(self) -> None:
        """Close the file (the follower can be read again later: it reopens)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> list[Record]:
        """Read to the end and take a last line without newline if it is whole (a finished log)."""
        out = self.read()
        if self._buf:
            record = parse_line(self._buf)
            self.stats.lines += 1
            if record is not None:
                self.stats.records += 1
                out.append(record)
            else:
                self.stats.partial += 1
            self._buf = b""
        return out

    def _open(self) -> bool:
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - held open across reads
        except FileNotFoundError:
            return False
        self._ino = os.fstat(self._fh.fileno()).st_ino
        self._buf = b""
        return True

    def _take(self, chunk: bytes, out: list[Record]) -> None:
        lines = (self._buf + chunk).split(b"\n")
        self._buf = lines.pop()
        stats = self.stats
        for raw in lines:
            if not raw.strip():
                continue
            stats.lines += 1
            record = parse_line(raw)
            if record is None:
                stats.ignored += 1
            else:
                stats.records += 1
                out.append(record)

    def _drop_partial(self) -> None:
        if self._buf:
            self.stats.lines += 1
            self.stats.partial += 1
            self._buf = b""


def read_logs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Record], ReadStats]:
    """Every record of finished log files, oldest file first (rotated ones before the live one)."""
    records: list[Record] = []
    total = ReadStats()
    for path in paths:
        follower = LogFollower(path)
        if not follower.path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        if not follower.path.is_file():
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        try:
            records.extend(follower.finish())
        finally:
            follower.close()
        for name in ("lines", "records", "ignored", "partial"):
            setattr(total, name, getattr(total, name) + getattr(follower.stats, name))
    return records, total
