"""The hint under a provider's error status: chosen from what the provider said.

A 400 means many different things, and the fix for each is somewhere else: a
stage parameter the server does not know is fixed in the pipeline file or by the
endpoint's ``kind``, a missing or unknown model in ``BRIEFD_MODEL`` or the model
alias, a prompt too long for the context in the prompt or ``max_tokens``, a
refused key in the variable that holds it. So the hint is chosen from the
provider's own message and error code (OpenAI's ``error.code`` / ``error.type``,
Azure's ``error.code``), and only when none of them matches from the status.

The provider's message itself is shown in the error (``HTTP 400: ...``); the hint
says where to act. Matching is on the public wording of OpenAI, Azure OpenAI and
the common compatible servers (vLLM, Ollama, llama.cpp's server, Groq); an
unknown wording falls back to the status's hint, never to a wrong one.
"""

from __future__ import annotations

import re

QUOTA_CODES = frozenset({"insufficient_quota"})
"""Upstream error codes (OpenAI's ``error.code`` / ``error.type``) for an exhausted quota."""

DEFAULT_KEY_ENV = "BRIEFD_API_KEY"

_ARGUMENT = (
    # OpenAI: "Unrecognized request argument supplied: top_k" (several: "arguments ... a, b")
    re.compile(r"(?i)unrecognized request arguments? supplied:\s*([\w.\-]+(?:\s*,\s*[\w.\-]+)*)"),
    # OpenAI's newer wording, and models that refuse a documented one (o1: max_tokens)
    re.compile(r"(?i)\b(?:unknown|unsupported) parameter:?\s*['\"`]([\w.\-]+)['\"`]"),
    # Groq: "property 'top_k' is unsupported"
    re.compile(r"(?i)\bproperty\s+['\"`]([\w.\-]+)['\"`]\s+is\s+unsupported"),
)
_STAGE_FIELDS = frozenset({"max_tokens", "temperature", "response_format", "messages"})
"""Request arguments briefd builds from a stage's own fields rather than its ``params``."""

_MODEL_CODES = frozenset({"model_not_found", "DeploymentNotFound"})
_MODEL_MISSING = re.compile(r"(?i)must provide a model|\bmodel\b[^.]{0,40}\b(?:is )?required")
_MODEL_UNKNOWN = re.compile(
    r"(?i)\bthe model\b.{0,120}\bdoes not exist"
    r"|\bmodel\b[^.]{0,80}\bnot found\b"
    r"|\bdeployment\b.{0,120}\bdoes not exist"
    r"|\binvalid model\b|\bunknown model\b|\bno such model\b"
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT = re.compile(
    r"(?i)maximum context length|context[ _]length|context window|exceeds? the available "
    r"context|prompt is too long|too many tokens|reduce the length of the messages"
)


def status_hint(
    status: int,
    detail: str,
    upstream_code: str | None = None,
    *,
    endpoint_kind: str = "",
    key_env: str = "",
    model: str = "",
    prompt_chars: int | None = None,
) -> str:
    """Where to act on an HTTP error ``status`` whose body said ``detail`` (and ``upstream_code``).

    The optional context sharpens the hint when the caller knows it: ``endpoint_kind``
    (``openai``, ``azure``, ``compatible``), ``key_env`` (the variable holding the key,
    ``BRIEFD_API_KEY`` when unset), ``model`` (the alias or model name asked for) and
    ``prompt_chars`` (the request's message characters). For example
    ``status_hint(400, "Unrecognized request argument supplied: top_k", endpoint_kind="openai")``
    says that an ``openai`` endpoint sends only documented arguments and names ``params.top_k``.
    """
    if upstream_code in QUOTA_CODES:
        return (
            "the API account's quota is used up or its billing needs attention: "
            "retrying will not help; check the plan and billing with the provider"
        )
    if status == 429:
        return "the API's rate limit: lower BRIEFD_MAX_CONCURRENT or raise your quota"
    if status in (500, 502, 503, 504):
        return "the API is failing or overloaded; retried automatically"
    if 400 <= status < 500:
        for hint in (
            _argument_hint(detail, endpoint_kind),
            _model_hint(detail, upstream_code, endpoint_kind, model),
            _context_hint(detail, upstream_code, prompt_chars),
        ):
            if hint:
                return hint
    key = key_env or DEFAULT_KEY_ENV
    if status == 401:
        return f"check {key}"
    if status == 403:
        return f"check {key}, and that its account or project may use this model"
    if status == 404:
        if endpoint_kind == "azure":
            return (
                "check the endpoint's base_url (https://RESOURCE.openai.azure.com), its "
                "api_version and the deployment name"
            )
        return "check BRIEFD_BASE_URL (it should end in /v1) and BRIEFD_MODEL"
    return "the API refused the request; check the prompt size and model limits"


def refused_arguments(detail: str) -> list[str]:
    """The request arguments a provider's message says it does not accept (maybe none)."""
    for pattern in _ARGUMENT:
        found = pattern.search(detail)
        if found:
            return [a.strip() for a in found.group(1).split(",") if a.strip()]
    return []


def _argument_hint(detail: str, endpoint_kind: str) -> str:
    names = refused_arguments(detail)
    if not names:
        return ""
    shown = ", ".join(names)
    where = ", ".join(n if n in _STAGE_FIELDS else f"params.{n}" for n in names)
    remove = f"remove {where} from the stage in the pipeline file"
    if all(n in _STAGE_FIELDS for n in names):  # a documented argument this model refuses
        return f"this model does not accept {shown}: {remove}, or use another model"
    if endpoint_kind == "openai":
        return (
            f"{shown} is not an argument of the OpenAI API, and an endpoint of kind openai "
            f"sends only its documented arguments: {remove}, or, if the server is not OpenAI "
            'itself, set kind = "compatible" for it (BRIEFD_ENDPOINT_KIND=compatible)'
        )
    if endpoint_kind == "compatible":
        return (
            f"the server does not accept the stage parameter {where}, which an endpoint of kind "
            f'compatible sends as written: {remove}, or set kind = "openai" for it so only the '
            "OpenAI API's documented arguments are sent"
        )
    return (
        f"the server does not accept the stage parameter {where}: {remove}, or set the "
        "endpoint's kind (kind = \"openai\" sends only the OpenAI API's documented arguments; "
        '"compatible" sends params too)'
    )


def _model_hint(detail: str, upstream_code: str | None, endpoint_kind: str, model: str) -> str:
    if _MODEL_MISSING.search(detail):
        sent = f"the server did not take the model {model!r}" if model else "no model was sent"
        return (
            f"{sent}: set BRIEFD_MODEL to a model the server serves (its /models "
            "lists them), or name a model alias with BRIEFD_ENDPOINTS"
        )
    if upstream_code not in _MODEL_CODES and not _MODEL_UNKNOWN.search(detail):
        return ""
    asked = f" {model!r}" if model else ""
    if endpoint_kind == "azure" or upstream_code == "DeploymentNotFound":
        return (
            f"no deployment{asked} at this Azure endpoint: for kind azure, the model in "
            "BRIEFD_MODEL or the alias's use = [...] is the deployment's name; check it in "
            "the Azure portal"
        )
    return (
        f"the server does not serve the model{asked}: check BRIEFD_MODEL, or the model alias's "
        "use = [...] entries in BRIEFD_ENDPOINTS (the server's /models lists what it serves)"
    )


def _context_hint(detail: str, upstream_code: str | None, prompt_chars: int | None) -> str:
    if upstream_code not in _CONTEXT_CODES and not _CONTEXT.search(detail):
        return ""
    size = (
        f" ({prompt_chars} characters, about {max(prompt_chars // 4, 1)} tokens)"
        if prompt_chars
        else ""
    )
    return (
        f"the prompt{size} and the stage's max_tokens do not fit in the model's context: "
        "shorten the job's prompt for this stage, lower max_tokens, or use a model with a "
        "larger context"
    )
