"""Deterministic JSON that fits a JSON schema, for the simulated server.

When a client asks for JSON with a schema (``response_format``), a real
model's answer is shaped by that schema; the simulator does the same so
clients that validate against the schema see a valid document.
"""

from __future__ import annotations

import hashlib
from typing import Any


def example_for_schema(schema: Any, words: list[str], path: str = "$") -> Any:
    """A value valid for the common subset of JSON Schema (type, properties, items, enum)."""
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    seed = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16)
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_for_schema(sub, words, f"{path}.{k}") for k, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), 2)
        item = schema.get("items", {})
        return [example_for_schema(item, words, f"{path}[{i}]") for i in range(count)]
    if kind == "string":
        pick = words[seed % len(words)] if words else "text"
        return f"{pick} ({path.rsplit('.', 1)[-1]})"
    if kind == "integer":
        return seed % 1000
    if kind == "number":
        return round((seed % 100000) / 10, 1)
    if kind == "boolean":
        return seed % 2 == 0
    return None
