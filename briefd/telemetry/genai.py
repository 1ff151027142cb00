"""The OpenTelemetry GenAI semantic conventions briefd follows: names, and which ones to emit.

The conventions are still *Development* and their metric names moved in 2026
(``gen_ai.client.operation.duration`` became ``gen_ai.client.inference.duration``;
``gen_ai.client.token.usage`` became one counter per token category). Their transition
plan asks an instrumentation to keep emitting the names it emitted until the user opts in
with ``OTEL_SEMCONV_STABILITY_OPT_IN``, a comma-separated list:

- unset (or no ``gen_ai_*`` value): the old names only;
- ``gen_ai_latest_experimental``: the latest names only, the old ones not at all;
- ``gen_ai_latest_experimental/dup``: both, for a migration window (the ``/dup`` form the
  HTTP and database conventions define for the same purpose).

Span names and attributes are the same in every mode: briefd started with
``gen_ai.provider.name`` (v1.37 and later), so there is no older span shape to keep.

The names live here as plain strings, in one place, rather than from
``opentelemetry-semantic-conventions``: its incubating module lags the GenAI repository
(it has no ``gen_ai.client.inference.*`` yet), and this module must import without the
``otel`` extra installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

# -- attributes ----------------------------------------------------------------------------

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_STREAM = "gen_ai.request.stream"
RESPONSE_TTFC = "gen_ai.response.time_to_first_chunk"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"  # old token-usage histogram: input | output
TOKEN_MODALITY = "gen_ai.token.modality"  # new usage counters: briefd's are all text
WORKFLOW_NAME = "gen_ai.workflow.name"
INPUT_MESSAGES = "gen_ai.input.messages"  # opt-in content
OUTPUT_MESSAGES = "gen_ai.output.messages"  # opt-in content
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

CHAT = "chat"
INVOKE_WORKFLOW = "invoke_workflow"

# -- metrics -------------------------------------------------------------------------------

OLD_DURATION = "gen_ai.client.operation.duration"
OLD_TTFC = "gen_ai.client.operation.time_to_first_chunk"
OLD_TOKEN_USAGE = "gen_ai.client.token.usage"

NEW_DURATION = "gen_ai.client.inference.duration"
NEW_TTFC = "gen_ai.client.inference.time_to_first_chunk"
NEW_USAGE_INPUT = "gen_ai.client.inference.usage.input_tokens"
NEW_USAGE_OUTPUT = "gen_ai.client.inference.usage.output_tokens"
NEW_USAGE_CACHE_READ = "gen_ai.client.inference.usage.cache_read.input_tokens"
NEW_USAGE_REASONING = "gen_ai.client.inference.usage.reasoning.output_tokens"
NEW_OPERATION_INPUT = "gen_ai.client.inference.operation.input_tokens"
NEW_OPERATION_OUTPUT = "gen_ai.client.inference.operation.output_tokens"

WORKFLOW_DURATION = "gen_ai.invoke_workflow.duration"  # new, no older name: always emitted

DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                      40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
WORKFLOW_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

# -- environment ---------------------------------------------------------------------------

OPT_IN_VAR = "OTEL_SEMCONV_STABILITY_OPT_IN"
CAPTURE_VAR = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
LATEST = "gen_ai_latest_experimental"
LATEST_DUP = "gen_ai_latest_experimental/dup"


@dataclass(frozen=True)
class Conventions:
    """Which GenAI metric names to emit, and whether message content goes out."""

    old: bool = True
    new: bool = False
    capture_content: bool = False

    @classmethod
    def from_env(cls) -> Conventions:
        values = {v.strip().lower() for v in os.environ.get(OPT_IN_VAR, "").split(",")}
        capture = os.environ.get(CAPTURE_VAR, "").strip().lower() == "true"
        if LATEST_DUP in values:
            return cls(old=True, new=True, capture_content=capture)
        if LATEST in values:
            return cls(old=False, new=True, capture_content=capture)
        return cls(old=True, new=False, capture_content=capture)


# -- providers -----------------------------------------------------------------------------

_HOSTS = {
    "api.openai.com": "openai",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "api.moonshot.ai": "moonshot_ai",
    "generativelanguage.googleapis.com": "gcp.gemini",
    "aiplatform.googleapis.com": "gcp.vertex_ai",
}


def provider_name(kind: str, base_url: str) -> str:
    """``gen_ai.provider.name`` of an endpoint: a well-known host's provider, Azure OpenAI
    for an ``azure`` endpoint, else ``openai``, the API flavour every other endpoint speaks
    (vLLM, Ollama, llama.cpp), as the OpenAI client instrumentation reports them."""
    host = (urlsplit(base_url).hostname or "").lower()
    if kind == "azure" or host.endswith(".openai.azure.com"):
        return "azure.ai.openai"
    for known, name in _HOSTS.items():
        if host == known or host.endswith("." + known):
            return name
    return "openai"


def server_of(base_url: str) -> tuple[str, int] | None:
    """``(server.address, server.port)`` of an endpoint's URL (the scheme's port if none)."""
    parts = urlsplit(base_url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)
