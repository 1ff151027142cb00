"""The one error type for bad configuration or bad input.

Its message is a single line that names the file or field at fault; the CLI
prints it as is (exit 2) and never shows a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class ConfigError(ValueError):
    """Bad settings, pipeline file or job input. ``str(err)`` is the whole story."""


def read_toml(path: Path | None, where: str, *, text: str | None = None) -> dict[str, Any]:
    """The TOML table in ``path`` (or ``text``, for a built-in file), with errors that name
    ``where`` (``prices file X``): one reader for settings-like files, one wording."""
    if text is None:
        assert path is not None
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{where}: cannot read: {err.strerror or err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: invalid TOML: {err}") from None


def describe_validation(err: ValidationError, *, where: str, prefix: str = "") -> str:
    """One line per problem, each naming the field (``prompts.PLAYS_MD``), joined by '; '."""
    parts = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return f"{where}: " + "; ".join(parts)
