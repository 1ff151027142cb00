"""What each kind of endpoint accepts, and the request body built for it.

The OpenAI API refuses any top-level argument it does not document
(``400 Unrecognized request argument supplied: repeat_penalty``), and Azure
OpenAI follows it. Servers of kind ``compatible`` (vLLM, Ollama, llama.cpp, LM
Studio) ignore what they do not know and honour extras such as
``repeat_penalty``. So a stage's extra ``params`` go only where they are
accepted; :func:`dropped_params` lists the rest, which the caller says once at
start rather than on every call.

The embedded model (SmolLM2 through llama.cpp) loops without a repeat
penalty: briefd adds its own sampling extras for it (:mod:`briefd.local.sampling`),
so the built-in pipeline carries none and runs unchanged on a strict endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from briefd.config import Settings, StageSpec
from briefd.config.endpoints import EndpointSpec
from briefd.local import sampling
from briefd.sim.catalog import is_reasoning
from briefd.sim.openai_spec import CHAT_ARGUMENTS

OPENAI_CHAT_ARGUMENTS = frozenset(CHAT_ARGUMENTS)
"""``CreateChatCompletionRequest``'s documented top-level properties: the one copy, extracted from
the public ``openai/openai-openapi`` document (:mod:`briefd.sim.openai_spec`, which the strict
simulator enforces too), so what briefd sends and what the simulator refuses cannot drift."""


def accepted(endpoint: EndpointSpec | None, name: str) -> bool:
    """Whether ``endpoint`` takes the top-level argument ``name``."""
    if endpoint is None or endpoint.accepts_extra_params:
        return True
    return name in OPENAI_CHAT_ARGUMENTS


def dropped_params(stages: Iterable[StageSpec], endpoint: EndpointSpec) -> list[tuple[str, str]]:
    """``(stage, param)`` pairs a stage declares that ``endpoint``'s kind would refuse."""
    return [
        (stage.name, name)
        for stage in stages
        for name in stage.params
        if not accepted(endpoint, name)
    ]


def streams(stage: StageSpec, settings: Settings, endpoint: EndpointSpec | None) -> bool:
    """Whether ``stage``'s calls to ``endpoint`` ask for a streamed answer.

    ``BRIEFD_STREAM`` (default on), unless the endpoint's or the stage's ``stream = false``
    says no. The embedded model does not stream: its server (llama-cpp-python) is briefd's
    own, on the same machine, where a stall is not a network's and the first token
    is no news; its answers are read whole, as before.
    """
    if not (settings.stream and stage.stream):
        return False
    return endpoint is None or (endpoint.stream and endpoint.kind != "embedded")


def build_request(
    stage: StageSpec,
    prompt: str,
    settings: Settings,
    extra_messages: list[dict[str, str]] | None = None,
    *,
    endpoint: EndpointSpec | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The chat-completions body for one stage, as ``endpoint``'s kind accepts it.

    JSON stages ask for JSON the way the server understands: ``json_schema``
    (OpenAI, Azure, vLLM, Ollama) or ``json_object``, with an inline ``schema``
    only for servers that read one (llama.cpp's); the OpenAI API refuses it there.
    ``model`` is the route's (else ``BRIEFD_MODEL``); Azure names it in the URL.
    A streamed call (:func:`streams`) asks for the usage at its end (``include_usage``:
    OpenAI, Azure, vLLM, llama.cpp and Ollama take it).
    """
    kind = endpoint.kind if endpoint is not None else None
    chosen = model if model is not None else settings.model
    messages: list[dict[str, str]] = []
    if stage.system:
        messages.append({"role": "system", "content": stage.system})
    messages.append({"role": "user", "content": prompt})
    messages.extend(extra_messages or [])
    params = {k: v for k, v in stage.params.items() if accepted(endpoint, k)}
    if kind == "embedded":
        params = {**sampling.params_for(stage.kind), **params}
    body: dict[str, Any] = {**params, "messages": messages}
    if chosen and kind != "azure":
        body["model"] = chosen
    reasoning = kind in ("openai", "azure") and is_reasoning(chosen or "")
    if stage.max_tokens is not None:
        # OpenAI's reasoning models (o-series, gpt-5) refuse max_tokens: its documented
        # successor counts their hidden reasoning too, so such a stage may need a larger one.
        body["max_completion_tokens" if reasoning else "max_tokens"] = stage.max_tokens
    if stage.temperature is not None and not reasoning:  # they take only the default (1)
        body["temperature"] = stage.temperature
    style = (
        stage.response_format
        or (endpoint.response_format if endpoint is not None else None)
        or settings.response_format
        or "json_schema"
    )
    if streams(stage, settings, endpoint):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # else a stream reports no usage
    if stage.kind == "json" and style != "none":
        inline_schema = kind not in ("openai", "azure")
        # llama.cpp enforces a schema as a grammar; with none, the embedded model still gets
        # one: any JSON object, so an answer always parses unless max_tokens cuts it.
        schema = stage.schema_
        if kind == "embedded":
            schema = sampling.bounded(schema or sampling.GENERIC_OBJECT_SCHEMA)
        if style == "json_schema" and schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": stage.name.lower(), "schema": schema},
            }
        elif schema is not None and inline_schema:
            body["response_format"] = {"type": "json_object", "schema": schema}
        else:
            body["response_format"] = {"type": "json_object"}
    return body
