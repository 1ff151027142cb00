"""Regenerate :mod:`briefd.sim.openai_spec` from OpenAI's published OpenAPI document.

The strict simulator must refuse what OpenAI refuses, so its list of arguments comes
from the public reference, not from memory. Run::

    git -C <mirror of github.com/openai/openai-openapi> show HEAD:openapi.json > openapi.json
    python -m briefd.sim.spec_extract openapi.json <commit> > briefd/sim/openai_spec.py
    ruff format briefd/sim/openai_spec.py

Only the parts the simulator checks are kept: the top-level request arguments (including
those inherited through ``allOf``) with their JSON types and bounds, the message roles
with their fields and content-part types, the ``response_format`` variants, the usage
and model-list shapes, and ``stream_options``' fields.
"""

from __future__ import annotations

import json
import pprint
import sys
from typing import Any

Schemas = dict[str, Any]


def _resolve(schemas: Schemas, node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = schemas[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _properties(schemas: Schemas, node: Any) -> tuple[dict[str, Any], set[str]]:
    node = _resolve(schemas, node)
    props: dict[str, Any] = {}
    required = set(node.get("required", []))
    for part in node.get("allOf", []):
        more, req = _properties(schemas, part)
        props.update(more)
        required |= req
    props.update(node.get("properties", {}))
    return props, required


def _branches(schemas: Schemas, node: Any) -> list[dict[str, Any]]:
    node = _resolve(schemas, node)
    alts = node.get("anyOf") or node.get("oneOf")
    if alts:
        out = [b for alt in alts for b in _branches(schemas, alt)]
        if node.get("nullable"):
            out.append({"type": "null"})
        return out
    return [node]


def _descriptor(schemas: Schemas, node: Any) -> dict[str, Any]:
    """JSON types a value may have, and the bounds/enums worth checking."""
    out: dict[str, Any] = {"types": []}
    enums: list[Any] = []
    free_string = False
    for branch in _branches(schemas, node):
        kind = branch.get("type", "object" if "properties" in branch else None)
        if kind is None:
            continue
        if kind not in out["types"]:
            out["types"].append(kind)
        if branch.get("nullable") and "null" not in out["types"]:
            out["types"].append("null")
        if kind == "string":
            if "enum" in branch:
                enums.extend(e for e in branch["enum"] if e not in enums)
            else:
                free_string = True
        for bound in ("minimum", "maximum"):
            if kind in ("number", "integer") and bound in branch:
                out[bound] = branch[bound]
    if enums and not free_string:
        out["enum"] = enums
    return out


def extract(doc: dict[str, Any]) -> dict[str, Any]:
    """The data module's contents, from the parsed ``openapi.json``."""
    schemas: Schemas = doc["components"]["schemas"]
    props, required = _properties(schemas, schemas["CreateChatCompletionRequest"])
    arguments = {name: _descriptor(schemas, node) for name, node in sorted(props.items())}
    roles: dict[str, Any] = {}
    for ref in _resolve(schemas, schemas["ChatCompletionRequestMessage"])["oneOf"]:
        mprops, mreq = _properties(schemas, ref)
        role = mprops["role"]["enum"][0]
        parts: list[str] = []
        for branch in _branches(schemas, mprops.get("content", {})):
            if branch.get("type") == "array":
                for part in _branches(schemas, branch["items"]):
                    parts.extend(_properties(schemas, part)[0]["type"]["enum"])
        roles[role] = {
            "fields": sorted(mprops),
            "required": sorted(mreq),
            "content_parts": parts,
        }
    formats: dict[str, Any] = {}
    for ref in _resolve(schemas, props["response_format"])["oneOf"]:
        fprops, freq = _properties(schemas, ref)
        entry: dict[str, Any] = {"fields": sorted(fprops), "required": sorted(freq)}
        if "json_schema" in fprops:
            jprops, jreq = _properties(schemas, fprops["json_schema"])
            entry["json_schema_fields"] = sorted(jprops)
            entry["json_schema_required"] = sorted(jreq)
        formats[fprops["type"]["enum"][0]] = entry
    usage, _ = _properties(schemas, schemas["CompletionUsage"])
    model, model_req = _properties(schemas, schemas["Model"])
    stream_options = _branches(schemas, props["stream_options"])
    options = next((b for b in stream_options if b.get("type") == "object"), {})
    return {
        "CHAT_ARGUMENTS": arguments,
        "CHAT_REQUIRED": sorted(required),
        "MESSAGE_ROLES": roles,
        "RESPONSE_FORMATS": formats,
        "USAGE_FIELDS": sorted(usage),
        "PROMPT_TOKENS_DETAILS": sorted(_properties(schemas, usage["prompt_tokens_details"])[0]),
        "COMPLETION_TOKENS_DETAILS": sorted(
            _properties(schemas, usage["completion_tokens_details"])[0]
        ),
        "MODEL_FIELDS": sorted(model),
        "MODEL_REQUIRED": sorted(model_req),
        "STREAM_OPTIONS": {
            name: _descriptor(schemas, node)
            for name, node in sorted(_properties(schemas, options)[0].items())
        },
    }


def render(data: dict[str, Any], commit: str) -> str:
    """The Python source of :mod:`briefd.sim.openai_spec`."""
    head = (
        '"""What OpenAI\'s Chat Completions API accepts, extracted from its public reference.\n\n'
        "Source: github.com/openai/openai-openapi, file ``openapi.json`` at commit\n"
        f"``{commit}`` (schemas ``CreateChatCompletionRequest`` with its\n"
        "``allOf`` parents, ``ChatCompletionRequestMessage``, ``ResponseFormat*``,\n"
        "``CompletionUsage``, ``Model``, ``ChatCompletionStreamOptions``). Generated by\n"
        '``python -m briefd.sim.spec_extract``; do not edit by hand, regenerate.\n"""\n\n'
        "from typing import Any\n\n"
        f'SOURCE = "openai/openai-openapi openapi.json @ {commit}"\n'
    )
    body = "".join(
        f"\n{name}: Any = {pprint.pformat(value, width=96, sort_dicts=True)}\n"
        for name, value in data.items()
    )
    return head + body


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        sys.stdout.write(render(extract(json.load(fh)), sys.argv[2]))
