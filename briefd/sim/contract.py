"""The strict simulator's request validation: OpenAI's Chat Completions contract.

A lenient fake (and llama.cpp, vLLM, Ollama) ignores what it does not know; OpenAI
refuses it with a 400. Everything accepted here comes from the published OpenAPI
document (:mod:`briefd.sim.openai_spec`): the top-level arguments, their JSON types and
bounds, the message roles and their fields, the ``response_format`` variants. The rules
the document cannot express (``model`` is required; a ``json_object`` request must say
"json"; reasoning models refuse ``max_tokens`` and a non-default ``temperature``; the
Structured Outputs schema rules) are added from OpenAI's guides and public error reports.
"""

from __future__ import annotations

import re
from typing import Any

from briefd.sim import errors
from briefd.sim.catalog import Catalog, is_reasoning
from briefd.sim.errors import ApiError, json_type
from briefd.sim.openai_spec import (
    CHAT_ARGUMENTS,
    MESSAGE_ROLES,
    RESPONSE_FORMATS,
    STREAM_OPTIONS,
)
from briefd.sim.schema_rules import check_strict_schema

SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
SCHEMA_NAME_MAX = 64
# The order OpenAI lists the roles in its refusal.
_ROLE_ORDER = ["system", "assistant", "user", "function", "tool", "developer"]


def _type_ok(value: Any, types: list[str]) -> bool:
    kind = json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _argument(name: str, value: Any) -> ApiError | None:
    """Type, bounds and enum of one top-level argument, as its descriptor says."""
    spec = CHAT_ARGUMENTS[name]
    types: list[str] = spec["types"]
    if not _type_ok(value, types):
        return errors.invalid_type(name, types, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "maximum" in spec and value > spec["maximum"]:
            return errors.out_of_range(name, value, spec["maximum"], above=True)
        if "minimum" in spec and value < spec["minimum"]:
            return errors.out_of_range(name, value, spec["minimum"], above=False)
    if isinstance(value, str) and "enum" in spec and value not in spec["enum"]:
        return errors.invalid_value(name, value, spec["enum"])
    return None


def _stream_options(options: Any) -> ApiError | None:
    """``stream_options``' keys and their types, as ``ChatCompletionStreamOptions`` has them."""
    if not isinstance(options, dict):
        return None  # absent or null (its type was checked with the other arguments)
    for key, value in options.items():
        spec = STREAM_OPTIONS.get(key)
        if spec is None:
            return errors.unknown_parameter(f"stream_options.{key}")
        if not _type_ok(value, spec["types"]):
            return errors.invalid_type(f"stream_options.{key}", spec["types"], value)
    return None


def _content(where: str, role: str, content: Any) -> ApiError | None:
    parts_allowed: list[str] = MESSAGE_ROLES[role]["content_parts"]
    if isinstance(content, str):
        return None
    if content is None and role in ("assistant", "function"):
        return None
    if not isinstance(content, list) or not parts_allowed:
        expected = ["string", "array"] if parts_allowed else ["string"]
        return errors.invalid_type(f"{where}.content", expected, content)
    if not content:
        return errors.empty_array(f"{where}.content")
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            return errors.invalid_type(at, ["object"], part)
        if "type" not in part:
            return errors.missing(f"{at}.type")
        if part["type"] not in parts_allowed:
            return errors.invalid_value(f"{at}.type", part["type"], parts_allowed)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            if "text" not in part:
                return errors.missing(f"{at}.text")
            return errors.invalid_type(f"{at}.text", ["string"], part["text"])
    return None


def _messages(messages: Any) -> ApiError | None:
    if not isinstance(messages, list):
        return errors.invalid_type("messages", ["array"], messages)
    if not messages:
        return errors.empty_array("messages")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            return errors.invalid_type(where, ["object"], msg)
        if "role" not in msg:
            return errors.missing(f"{where}.role")
        role = msg["role"]
        if role not in MESSAGE_ROLES:
            return errors.invalid_value(f"{where}.role", role, _ROLE_ORDER)
        spec = MESSAGE_ROLES[role]
        unknown = next((k for k in msg if k not in spec["fields"]), None)
        if unknown is not None:
            return errors.unknown_parameter(f"{where}.{unknown}")
        absent = next((k for k in spec["required"] if k not in msg), None)
        if absent is not None:
            return errors.missing(f"{where}.{absent}")
        if "name" in msg and not isinstance(msg["name"], str):
            return errors.invalid_type(f"{where}.name", ["string"], msg["name"])
        error = _content(where, role, msg.get("content"))
        if error is not None:
            return error
    return None


def _json_schema(fmt: dict[str, Any]) -> ApiError | None:
    spec = RESPONSE_FORMATS["json_schema"]
    inner = fmt["json_schema"]
    if not isinstance(inner, dict):
        return errors.invalid_type("response_format.json_schema", ["object"], inner)
    unknown = next((k for k in inner if k not in spec["json_schema_fields"]), None)
    if unknown is not None:
        return errors.unknown_parameter(f"response_format.json_schema.{unknown}")
    absent = next((k for k in spec["json_schema_required"] if k not in inner), None)
    if absent is not None:
        return errors.missing(f"response_format.json_schema.{absent}")
    name, param = inner["name"], "response_format.json_schema.name"
    if not isinstance(name, str):
        return errors.invalid_type(param, ["string"], name)
    if not SCHEMA_NAME.match(name):
        return ApiError(
            400,
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            f"matches the pattern '{SCHEMA_NAME.pattern}'.",
            param=param,
            code="invalid_value",
        )
    if len(name) > SCHEMA_NAME_MAX:
        return ApiError(
            400,
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{SCHEMA_NAME_MAX}, but got a string with length {len(name)} instead.",
            param=param,
            code="string_above_max_length",
        )
    if "schema" in inner and not isinstance(inner["schema"], dict):
        schema_param = "response_format.json_schema.schema"
        return errors.invalid_type(schema_param, ["object"], inner["schema"])
    strict = inner.get("strict")
    if strict is not None and not isinstance(strict, bool):
        return errors.invalid_type("response_format.json_schema.strict", ["boolean"], strict)
    if strict:
        return check_strict_schema(name, inner.get("schema"))
    return None


def _says_json(messages: list[dict[str, Any]]) -> bool:
    for msg in messages:
        content = msg.get("content")
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
        if any(isinstance(t, str) and "json" in t.lower() for t in texts):
            return True
    return False


def _response_format(fmt: Any, messages: list[dict[str, Any]]) -> ApiError | None:
    if not isinstance(fmt, dict):
        return errors.invalid_type("response_format", ["object"], fmt)
    if "type" not in fmt:
        return errors.missing("response_format.type")
    kind = fmt["type"]
    if kind not in RESPONSE_FORMATS:
        return errors.invalid_value("response_format.type", kind, list(RESPONSE_FORMATS))
    spec = RESPONSE_FORMATS[kind]
    unknown = next((k for k in fmt if k not in spec["fields"]), None)
    if unknown is not None:
        return errors.unknown_parameter(f"response_format.{unknown}")
    absent = next((k for k in spec["required"] if k not in fmt), None)
    if absent is not None:
        return errors.missing(f"response_format.{absent}")
    if kind == "json_schema":
        return _json_schema(fmt)
    if kind == "json_object" and not _says_json(messages):
        return ApiError(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            param="messages",
        )
    return None


def _reasoning_rules(body: dict[str, Any]) -> ApiError | None:
    if "max_tokens" in body:
        return ApiError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return ApiError(
            400,
            f"Unsupported value: 'temperature' does not support {temperature} with this "
            "model. Only the default (1) value is supported.",
            param="temperature",
            code="unsupported_value",
        )
    return None


def validate_chat(
    body: Any, catalog: Catalog, *, deployment_model: str | None = None
) -> tuple[str, ApiError | None]:
    """Check a decoded request body; returns (the dated model that answers, refusal or None).

    ``deployment_model`` is set on Azure's deployment route: the URL picks the model, so
    the body needs none (and one it names is ignored, as Azure does).
    """
    if not isinstance(body, dict):
        return "", errors.NOT_JSON
    unknown = [k for k in body if k not in CHAT_ARGUMENTS]
    if unknown:
        return "", errors.unrecognized(unknown)
    if deployment_model is not None:
        model = deployment_model
    else:
        if body.get("model") is None:
            return "", errors.NO_MODEL
        if not isinstance(body["model"], str):
            return "", errors.invalid_type("model", ["string"], body["model"])
        model = body["model"]
    served = catalog.resolve(model)
    if served is None:
        return "", errors.model_not_found(model)
    if "messages" not in body:
        return served, errors.missing("messages")
    for name, value in body.items():
        if name not in ("messages", "model"):
            error = _argument(name, value)
            if error is not None:
                return served, error
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return served, ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    error = _stream_options(body.get("stream_options"))
    if error is None:
        error = _messages(body["messages"])
    if error is None and body.get("response_format") is not None:
        error = _response_format(body["response_format"], body["messages"])
    if error is None and is_reasoning(served):
        error = _reasoning_rules(body)
    elif error is None and body.get("reasoning_effort") is not None:
        error = ApiError(
            400,
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            param="reasoning_effort",
            code="unsupported_parameter",
        )
    return served, error
