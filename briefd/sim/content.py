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
import time
from typing import Any

from briefd.sim.faults import Fault


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
) -> str:
    """Deterministic assistant content for (stage, last user message).

    JSON answers are a bare fenced block; markdown answers have a sentence outside the
    fence, so a client that does not extract the fence is caught by its own parser.
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
        return f"```json\n{text}\n```"
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
    stage: str, body: dict[str, Any], fault: Fault | None, request_id: int
) -> dict[str, Any]:
    """The ``chat.completion`` object for a parsed request, with content faults applied."""
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
        "model": model if isinstance(model, str) and model else MODEL_ID,
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
