"""OpenAI's Structured Outputs rules for ``json_schema`` with ``strict: true``.

OpenAI refuses a strict schema it cannot compile into a grammar, before any generation:
the root must be an object, every object must say ``additionalProperties: false`` and
list every property in ``required``, nesting is bounded, and some JSON Schema keywords
are not permitted. Messages follow the wording public error reports show
("Invalid schema for response_format 'x': In context=('properties', 'y'), ...").
"""

from __future__ import annotations

from typing import Any

from briefd.sim.errors import ApiError

MAX_DEPTH = 10  # levels of nesting (OpenAI's guide; it was 5 before late 2024)
MAX_PROPERTIES = 5000
# Keywords the guide lists as not supported in strict mode.
NOT_PERMITTED = frozenset(
    {
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
        "uniqueItems",
    }
)


class _Checker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.properties = 0

    def fail(self, text: str) -> ApiError:
        text = f"Invalid schema for response_format '{self.name}': {text}"
        return ApiError(400, text, param="response_format")

    def check(self, node: Any, ctx: tuple[str, ...], depth: int) -> ApiError | None:
        if not isinstance(node, dict):
            return self.fail(f"In context={ctx!r}, schema must be an object.")
        if depth > MAX_DEPTH:
            return self.fail(f"{depth} levels of nesting exceeds limit of {MAX_DEPTH}.")
        for key in node:
            if key in NOT_PERMITTED:
                return self.fail(f"In context={ctx!r}, '{key}' is not permitted.")
        if "$ref" in node:
            return None  # its target is checked where it is defined ($defs)
        kinds = node.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "object" in kinds or "properties" in node:
            error = self._object(node, ctx, depth)
            if error is not None:
                return error
        if "items" in node:
            error = self.check(node["items"], (*ctx, "items"), depth + 1)
            if error is not None:
                return error
        for keyword in ("anyOf", "oneOf"):
            for i, branch in enumerate(node.get(keyword, [])):
                error = self.check(branch, (*ctx, keyword, str(i)), depth)
                if error is not None:
                    return error
        for keyword in ("$defs", "definitions"):
            for name, sub in (node.get(keyword) or {}).items():
                error = self.check(sub, (*ctx, keyword, name), depth)
                if error is not None:
                    return error
        return None

    def _object(self, node: dict[str, Any], ctx: tuple[str, ...], depth: int) -> ApiError | None:
        if node.get("additionalProperties", True) is not False:
            return self.fail(
                f"In context={ctx!r}, 'additionalProperties' is required to be supplied "
                "and to be false."
            )
        props = node.get("properties") or {}
        required = node.get("required")
        names = list(props)
        listed = required if isinstance(required, list) else []
        absent = next((n for n in names if n not in listed), None)
        if not isinstance(required, list) or absent is not None:
            return self.fail(
                f"In context={ctx!r}, 'required' is required to be supplied and to be an array "
                f"including every key in properties. Missing '{absent or ''}'."
            )
        extra = next((r for r in required if r not in props), None)
        if extra is not None:
            return self.fail(f"In context={ctx!r}, Extra required key '{extra}' supplied.")
        self.properties += len(names)
        if self.properties > MAX_PROPERTIES:
            return self.fail(f"more than {MAX_PROPERTIES} object properties in total.")
        for prop, sub in props.items():
            error = self.check(sub, (*ctx, "properties", prop), depth + 1)
            if error is not None:
                return error
        return None


def check_strict_schema(name: str, schema: Any) -> ApiError | None:
    """The refusal OpenAI gives this ``strict`` schema, or None if it would compile it."""
    checker = _Checker(name)
    if not isinstance(schema, dict):
        schema = {}
    root_type = schema.get("type")
    if root_type != "object":
        return checker.fail(
            f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{root_type}\"'."
        )
    return checker.check(schema, (), 1)
