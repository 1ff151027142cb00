"""Pull a stage's document out of the model's text and check it.

The seed takes the first ```markdown (or ```json) fenced block and falls back
to the whole text for markdown. JSON must parse and, when the stage has a
schema, validate; servers that honour ``response_format`` answer with bare
JSON, so that is accepted too.

The model's JSON may spell lone surrogates (``"\\ud800"``) that only appear once
it is parsed: the parsed document is scrubbed (:func:`briefd.llm.text.scrub`,
U+FFFD for each) so that it can always be written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from briefd.config import ConfigError, StageSpec
from briefd.llm.errors import InvalidOutputError
from briefd.llm.text import scrub

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)\r?\n[ \t]*```", re.DOTALL)
_ALIASES = {"markdown": ("markdown", "md"), "json": ("json",)}


def first_fenced(text: str, kind: str) -> str | None:
    """The body of the first fenced block whose language is ``kind`` (or an alias)."""
    for m in _FENCE.finditer(text):
        if m.group(1).lower() in _ALIASES[kind]:
            return m.group(2)
    return None


def check_schema(stage: StageSpec) -> None:
    """Refuse a pipeline whose schema is not a valid JSON Schema (at load, not mid-job)."""
    if stage.schema_ is not None:
        try:
            Draft202012Validator.check_schema(stage.schema_)
        except SchemaError as err:
            raise ConfigError(f"stage {stage.name}: invalid JSON schema: {err.message}") from None


def extract_document(stage: StageSpec, text: str) -> Any:
    """The document a stage produced: markdown text, or parsed and validated JSON."""
    if stage.kind == "markdown":
        body = first_fenced(text, "markdown")
        return (body if body is not None else text).strip() + "\n"
    body = first_fenced(text, "json")
    candidate = body if body is not None else text.strip()
    try:
        doc = scrub(json.loads(candidate, strict=False))  # raw newlines in strings are common
    except (ValueError, RecursionError) as err:
        raise InvalidOutputError(f"not valid JSON: {err}") from None
    if stage.schema_ is not None:
        errors = sorted(
            Draft202012Validator(stage.schema_).iter_errors(doc), key=lambda e: list(e.path)
        )
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(root)"
            raise InvalidOutputError(f"JSON does not match the schema at {where}: {first.message}")
    return doc
