"""Logging: loguru for everything, pykka's stdlib logging included.

Two formats. JSON is the event log, schema v1 (:mod:`briefd.ops.eventlog`): one
object per line, the same on stderr and in the file sink (``BRIEFD_LOG_FILE``,
rotated at :data:`ROTATION`, always DEBUG so the console sees every token).
Text is for a person at a terminal: time, level, one line of message with its
control characters escaped, so a server's error text cannot forge a line.

Every line of either format is redacted on its way out (:mod:`briefd.redaction`):
the configured API key, secrets registered with :func:`register_secret` (the
daemon's bearer token), and anything shaped like ``Bearer <token>``, ``sk-...``
or an ``Authorization`` / ``api-key`` / ``x-api-key`` value. Tracebacks are
printed without local variables (``diagnose=False``): locals can hold keys. The
log file is created 0600 whatever the umask: it holds job ids, stage errors and
upstream text that are nobody else's business, redacted or not.

briefd is quiet as a library (``briefd/__init__`` disables its loguru messages);
:func:`setup_logging` is the application saying it wants them, so it enables
them, and then warns about each ``BRIEFD_*`` variable briefd does not read: a
misspelt setting would otherwise be ignored without a word.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

from loguru import logger

from briefd.config import Settings
from briefd.config.settings import unknown_environment
from briefd.ops.eventlog import LOG_EVENT, SCHEMA_VERSION, dumps_line, escape_control, line_of
from briefd.redaction import REDACTED, redact, register_secret

if TYPE_CHECKING:
    from loguru import Record

ROTATION = "50 MB"
RETENTION = 5
LOG_FILE_MODE = 0o600
# The redaction helpers moved to briefd.redaction; they are still importable from here.
__all__ = ["REDACTED", "RETENTION", "ROTATION", "redact", "register_secret", "setup_logging"]
# Unknown variables already warned about: once per process, however often logging is set up.
_warned: set[str] = set()


def _private_opener(path: str, flags: int) -> int:
    """``open()``'s opener for the log file: a new file is created 0600 (the umask can only
    remove bits); an existing one keeps the mode its operator gave it."""
    return os.open(path, flags, LOG_FILE_MODE)


def _exception_text(record: Record) -> str:
    exc = record["exception"]
    if exc is None or exc.type is None:
        return ""
    return "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))


def _json_format(record: Record) -> str:
    """loguru format callable: the v1 line, computed once per message for every JSON sink."""
    extra = record["extra"]
    if "_v1" not in extra:
        payload = extra.get("payload")
        if isinstance(payload, dict) and "event" in extra:
            line = line_of(payload, record["level"].name, record["message"])
        else:
            line = {
                "v": SCHEMA_VERSION,
                "ts": round(record["time"].timestamp(), 6),
                "level": record["level"].name,
                "event": LOG_EVENT,
                "job_id": extra.get("job_id"),
                "stage": extra.get("stage"),
                "logger": record["name"],
                "msg": record["message"],
            }
            if record["exception"] is not None:
                line["exception"] = _exception_text(record)
        extra["_v1"] = redact(dumps_line(line))
    return "{extra[_v1]}\n"


def _text_format(record: Record) -> str:
    """loguru format callable: one escaped, redacted line (plus a redacted traceback)."""
    extra = record["extra"]
    extra["_text"] = escape_control(redact(record["message"]))
    extra["_exc"] = redact(_exception_text(record))
    return "{time:HH:mm:ss.SSS} {level: <7} {extra[_text]}\n{extra[_exc]}"


class _InterceptHandler(logging.Handler):
    """Send stdlib log records (pykka's actor deaths among them) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, record.getMessage())


def setup_logging(
    settings: Settings,
    *,
    stream: Any = None,
    rotation: str | int = ROTATION,
    retention: int = RETENTION,
) -> None:
    """Configure loguru once for a process: text on a terminal, JSON lines otherwise."""
    register_secret(settings.api_key_value())
    token_file = settings.resolved_token_file()
    with contextlib.suppress(OSError):  # no token yet: the daemon registers the one it makes
        register_secret(token_file.read_text(encoding="utf-8").strip())
    out = stream if stream is not None else sys.stderr
    logger.remove()
    fmt = settings.log_format
    as_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    logger.add(
        out,
        level=settings.log_level,
        format=_json_format if as_json else _text_format,
        diagnose=False,
        backtrace=False,
        colorize=False,
    )
    if settings.log_file is not None:
        logger.add(
            settings.log_file,
            level="DEBUG",
            format=_json_format,
            diagnose=False,
            backtrace=False,
            rotation=rotation,
            retention=retention,
            enqueue=True,
            opener=_private_opener,  # loguru passes unknown keywords on to open()
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    # INFO, not DEBUG: pykka's DEBUG is a "Registered"/"Unregistered" line per actor, five
    # actors a job; routed into loguru they were two thirds of its records at 100 jobs, K=16.
    # Actor deaths (ERROR) and failed asks (INFO) still come through.
    logging.getLogger("pykka").setLevel(logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logger.enable("briefd")
    warn_unknown_environment()


def unknown_environment_warnings(environ: dict[str, str] | None = None) -> list[str]:
    """One line per ``BRIEFD_*`` variable briefd does not read, not yet warned about in this
    process (each names the variable and the one it probably meant)."""
    lines = []
    for text in unknown_environment(environ):
        name = text.split(" ", 1)[0]
        if name not in _warned:
            _warned.add(name)
            lines.append(f"unknown variable {text}: ignored")
    return lines


def warn_unknown_environment(environ: dict[str, str] | None = None) -> None:
    """Log :func:`unknown_environment_warnings` as warnings."""
    for line in unknown_environment_warnings(environ):
        logger.warning("{}", line)
