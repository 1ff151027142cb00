"""What the simulated server says: deterministic completions, errors, and JSON shaped
by the schema a client asks for.

When a client asks for JSON with a schema (``response_format``), a real model's
answer is shaped by that schema; the simulator does the same, so clients that
validate against the schema see a valid document. Everything here is a pure
function of the request, so two runs of the same job get the same documents.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from briefd.sim.faults import Fault

_FORMAT_EXAMPLES = {
    "date-time": "2024-01-02T03:04:05Z",
    "date": "2024-01-02",
    "time": "03:04:05",
    "duration": "P1D",
    "email": "someone@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
}


def _deref(schema: Any, root: Any) -> Any:
    """Follow a local ``$ref`` (``#/$defs/X``, ``#/definitions/X``, ``#``) within ``root``."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        node: Any = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            if part:
                node = node.get(part) if isinstance(node, dict) else None
        schema, seen = node, seen + 1
    return schema


def example_for_schema(schema: Any, words: list[str], path: str = "$", root: Any = None) -> Any:
    """A value valid for the JSON Schema subset models are constrained to.

    Covers type, properties, items (with minItems/maxItems), enum, const, anyOf/oneOf,
    local $ref, numeric bounds and string formats: what OpenAI's strict mode accepts.
    """
    root = schema if root is None else root
    schema = _deref(schema, root)
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for keyword in ("anyOf", "oneOf"):
        branches = [_deref(b, root) for b in schema.get(keyword) or []]
        if branches:
            pick = next((b for b in branches if b.get("type") != "null"), branches[0])
            return example_for_schema(pick, words, path, root)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    seed = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16)
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_for_schema(sub, words, f"{path}.{k}", root) for k, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), 2)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        item = schema.get("items", {})
        return [example_for_schema(item, words, f"{path}[{i}]", root) for i in range(count)]
    if kind == "string":
        if schema.get("format") in _FORMAT_EXAMPLES:
            return _FORMAT_EXAMPLES[schema["format"]]
        pick = words[seed % len(words)] if words else "text"
        return f"{pick} ({path.rsplit('.', 1)[-1]})"
    if kind in ("integer", "number"):
        value: float = seed % 1000 if kind == "integer" else round((seed % 100000) / 10, 1)
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is not None or high is not None:
            lo = float(low) if low is not None else float(high or 0) - 1000
            hi = float(high) if high is not None else lo + 1000
            value = lo + (hi - lo) / 2 if hi > lo else lo
            if kind == "integer":
                value = math.floor(value)
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return seed % 2 == 0
    return None


MODEL_ID = "briefd-sim"
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI-style error JSON, so clients exercise their real error parsing."""
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "api_error", None))
    return {"error": {"message": message, "type": kind, "code": code}}


def _text_of(content: object) -> str:
    """Plain text of a message ``content`` (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def render_content(
    stage: str,
    prompt: str,
    *,
    json_mode: bool,
    invalid_json: bool = False,
    schema: dict[str, Any] | None = None,
    fenced: bool = True,
) -> str:
    """Deterministic assistant content for (stage, last user message).

    JSON answers are a bare fenced block (or, with ``fenced=False``, the JSON alone, as a
    provider constraining output to a ``response_format`` answers); markdown answers have
    a sentence outside the fence, so a client that does not extract the fence is caught
    by its own parser.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
    lines = [ln.strip().replace("```", "'''")[:100] for ln in prompt.splitlines() if ln.strip()]
    if json_mode:
        items = [{"id": i + 1, "text": ln} for i, ln in enumerate(lines[:3])]
        obj: Any = {"stage": stage, "items": items, "word_count": _words(prompt), "digest": digest}
        if schema is not None:  # shaped by the schema the client asked for
            obj = example_for_schema(schema, [w for ln in lines for w in ln.split()][:50])
        text = json.dumps(obj, indent=2, ensure_ascii=False)
        if invalid_json:  # drop the closing brace and leave a dangling comma
            text = text[: text.rfind("}")].rstrip() + ',\n  "items": ['
        return f"```json\n{text}\n```" if fenced else text
    base = stage[:-3] if stage.endswith("_MD") else stage
    title = base.replace("_", " ").strip().title() or "Document"
    bullets = "\n".join(f"- {ln}" for ln in lines[:5]) or "- (empty prompt)"
    return (
        f"Here is the {title.lower()} draft.\n\n"
        f"```markdown\n# {title}\n\n{bullets}\n\n_digest: {digest}_\n```"
    )


def _requested_schema(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema in an OpenAI (``json_schema``) or llama.cpp (``schema``) response_format."""
    if not isinstance(fmt, dict):
        return None
    inner = fmt.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else fmt.get("schema")
    return schema if isinstance(schema, dict) else None


def parse_chat(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """Validate just enough of a chat request to answer; returns (body, error message)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return {}, "request body is not valid JSON"
    if not isinstance(body, dict):
        return {}, "request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return {}, "'messages' must be a non-empty list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            return {}, f"messages[{i}] must be an object with a string 'role'"
    return body, None


def completion_body(
    stage: str,
    body: dict[str, Any],
    fault: Fault | None,
    request_id: int,
    *,
    served_model: str | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """The ``chat.completion`` object for a parsed request, with content faults applied.

    ``strict`` answers as OpenAI does: the JSON of a ``response_format`` request is the
    whole content (no fence), and ``served_model`` (the dated name) is the answer's model.
    """
    messages: list[dict[str, Any]] = body["messages"]
    users = [m for m in messages if m.get("role") == "user"]
    prompt = _text_of(users[-1].get("content")) if users else ""
    fmt = body.get("response_format")
    json_mode = stage.endswith("_JSON") or (
        isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    )
    content = render_content(
        stage,
        prompt,
        json_mode=json_mode,
        invalid_json=bool(fault and fault.invalid_json),
        schema=_requested_schema(fmt),
        fenced=not (strict and isinstance(fmt, dict) and fmt.get("type") != "text"),
    )
    finish = "stop"
    if fault is not None and fault.truncate:
        content, finish = content[: max(1, len(content) // 2)], "length"
    prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in messages)
    completion_tokens = _words(content)
    model = body.get("model")
    return {
        "id": f"chatcmpl-sim-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model or (model if isinstance(model, str) and model else MODEL_ID),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
