"""Logging: loguru for everything, pykka's stdlib logging included.

Tracebacks are printed without local variables (``diagnose=False``): locals
can hold API keys and tokens.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

from briefd.config import Settings


class _InterceptHandler(logging.Handler):
    """Send stdlib log records (pykka's actor deaths among them) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, record.getMessage())


def setup_logging(settings: Settings, *, stream: Any = None) -> None:
    """Configure loguru once for a process: text on a terminal, JSON lines otherwise."""
    out = stream if stream is not None else sys.stderr
    logger.remove()
    fmt = settings.log_format
    as_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    logger.add(
        out,
        level=settings.log_level,
        serialize=as_json,
        diagnose=False,
        backtrace=False,
        format="{time:HH:mm:ss.SSS} {level: <7} {message}",
    )
    if settings.log_file is not None:
        logger.add(
            settings.log_file,
            level="DEBUG",
            serialize=True,
            diagnose=False,
            backtrace=False,
            rotation="50 MB",
            retention=5,
            enqueue=True,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    logging.getLogger("pykka").setLevel(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
