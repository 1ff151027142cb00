"""The one error type for bad configuration or bad input.

Its message is a single line that names the file or field at fault; the CLI
prints it as is (exit 2) and never shows a traceback.
"""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(ValueError):
    """Bad settings, pipeline file or job input. ``str(err)`` is the whole story."""


def describe_validation(err: ValidationError, *, where: str, prefix: str = "") -> str:
    """One line per problem, each naming the field (``prompts.PLAYS_MD``), joined by '; '."""
    parts = []
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return f"{where}: " + "; ".join(parts)
