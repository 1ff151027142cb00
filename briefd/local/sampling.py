"""The sampler settings briefd gives its embedded model, and only it.

Small instruct models (SmolLM2-135M) loop without a repeat penalty: in prose they repeat a
line until ``max_tokens``; in JSON they repeat inside a string, so the object never closes and
the stage ends ``TRUNCATED``. llama.cpp's server has no repeat penalty by default. These
values live here, with the local provider, so the built-in pipeline carries no extra
argument and stays valid for a strict OpenAI endpoint, which refuses ``repeat_penalty``.

They reach the model twice, on purpose: the launcher makes them the server's defaults (so a
tool using ``briefd local-model`` gets them too), and :func:`briefd.llm.kinds.build_request`
sends them with every request to an endpoint of kind ``embedded`` (a stage's own ``params``
win). This module imports nothing heavy: :mod:`briefd.llm.kinds` reads it on every call.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GENERIC_OBJECT_SCHEMA",
    "JSON_PARAMS",
    "MARKDOWN_PARAMS",
    "REPEAT_PENALTY",
    "SEED",
    "bounded",
    "params_for",
]

REPEAT_PENALTY = 1.1
"""The server's default (for any client of ``briefd local-model``); briefd's stages send their
own below."""

SEED = 42
"""A fixed seed: the same job on the same model gives the same documents."""

MARKDOWN_PARAMS: dict[str, Any] = {"repeat_penalty": 1.3, "seed": SEED}
"""Prose: SmolLM2 still repeats bullet lines at 1.1."""

JSON_PARAMS: dict[str, Any] = {"repeat_penalty": 1.05, "seed": SEED}
"""JSON: a light penalty. At 1.1 SmolLM2 is pushed off the facts it should copy from the prompt
("$180,000", "FuelLink") and wanders inside the summary string (373 tokens of dates against
161 at 1.05); at 1.0 it repeats one array item until the bound (509 tokens against 210). The
grammar, not the penalty, guarantees the JSON ends (:func:`bounded`)."""

_SCALAR: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}

GENERIC_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            *_SCALAR["anyOf"],
            {"type": "array", "items": _SCALAR},
            {"type": "object", "additionalProperties": _SCALAR},
        ]
    },
}
"""A JSON stage with no schema still gets a grammar: one JSON object of any keys, two levels
deep at most (strings, numbers, booleans, lists of them, objects of them), bounded below."""


def params_for(stage_kind: str) -> dict[str, Any]:
    """The extra request fields for a stage of ``stage_kind`` ("markdown" or "json")."""
    return dict(JSON_PARAMS if stage_kind == "json" else MARKDOWN_PARAMS)


MAX_STRING_CHARS = 300
"""Longest string value the grammar lets the embedded model write (when the schema sets none)."""

MAX_ARRAY_ITEMS = 5
"""Most items in an array (when the schema sets none)."""


def bounded(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a length bound on every unbounded string and array.

    Why: a grammar keeps the answer JSON, but not finite. SmolLM2 at temperature 0 wanders
    inside a string ("2023-10-28 14:57:59.642, 2023-10-28 ...") until ``max_tokens`` cuts it,
    and no repeat penalty stops that reliably (``bench/bench_local_json.py``). With a bound,
    llama.cpp's grammar closes the string, so the object ends. An answer valid against the
    bounded schema is valid against ``schema``: the bounds only narrow it. Strings with an
    ``enum``, ``const``, ``pattern`` or ``format`` are left as they are.
    """
    return _bound(schema)  # type: ignore[no-any-return]


def _bound(node: Any) -> Any:
    if isinstance(node, list):
        return [_bound(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _bound(value) for key, value in node.items()}
    types = out.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    free = not any(key in out for key in ("enum", "const", "pattern", "format"))
    if "string" in kinds and free and "maxLength" not in out:
        out["maxLength"] = MAX_STRING_CHARS
    if "array" in kinds and "maxItems" not in out:
        out["maxItems"] = max(MAX_ARRAY_ITEMS, int(out.get("minItems", 0)))
    return out
