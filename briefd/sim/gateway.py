"""What sits in front of the simulated model: routes, keys, the contract, usage details.

Kept out of the HTTP handler so each rule reads as a function of (path, headers, body):
OpenAI's ``/v1/chat/completions`` with ``Authorization: Bearer``; Azure OpenAI's
``/openai/deployments/{deployment}/chat/completions?api-version=...`` with ``api-key``;
lenient (today's answers) or strict (:mod:`briefd.sim.contract`).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from briefd.sim import errors
from briefd.sim.catalog import Catalog, PrefixCache, is_reasoning, usage_for
from briefd.sim.content import MODEL_ID
from briefd.sim.contract import validate_chat
from briefd.sim.errors import ApiError
from briefd.sim.ratelimit import SimRateLimits

OPENAI_CHAT = "/v1/chat/completions"
AZURE_CHAT = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")


@dataclass(frozen=True, slots=True)
class Route:
    """A chat request's route: OpenAI's, or Azure's with its deployment and api-version."""

    azure: bool
    deployment: str | None = None
    api_version: str | None = None


def chat_route(raw_path: str) -> Route | None:
    """The chat route ``raw_path`` (with its query) names, or None for any other path."""
    parts = urlsplit(raw_path)
    if parts.path == OPENAI_CHAT:
        return Route(azure=False)
    match = AZURE_CHAT.match(parts.path)
    if match is None:
        return None
    versions = parse_qs(parts.query).get("api-version")
    return Route(True, unquote(match.group(1)), versions[0] if versions else None)


@dataclass(slots=True)
class Gateway:
    """The provider's rules for one simulated server (fixed at start)."""

    strict: bool = False
    catalog: Catalog = field(default_factory=lambda: Catalog.build((MODEL_ID,), None))
    api_key: str | None = None
    cached_fraction: float | None = None
    limits: SimRateLimits | None = None
    prefixes: PrefixCache = field(default_factory=PrefixCache)

    def __repr__(self) -> str:  # the key stays out of reprs and tracebacks
        return f"Gateway(strict={self.strict}, models={list(self.catalog.models)})"

    @property
    def sends_rate_headers(self) -> bool:
        """Strict servers always send ``x-ratelimit-*``; lenient ones when a limit is set."""
        return self.limits is not None and (self.strict or self.limits.enforced)

    def _key_matches(self, given: str) -> bool:
        assert self.api_key is not None
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def check_access(self, route: Route, headers: Any) -> ApiError | None:
        """Azure's routing and key checks, or OpenAI's Bearer key check, in their order."""
        if route.azure:
            if not route.api_version:
                return errors.AZURE_NOT_FOUND
            if not API_VERSION.match(route.api_version):
                return errors.AZURE_BAD_VERSION
            if self.api_key is not None:
                key = headers.get("api-key")
                if key is None:
                    # A Bearer header here is an Entra ID token, which this resource refuses.
                    bearer = headers.get("Authorization")
                    return errors.AZURE_BAD_KEY if bearer else errors.AZURE_NO_KEY
                if not self._key_matches(key):
                    return errors.AZURE_BAD_KEY
            if route.deployment not in self.catalog.deployments:
                return errors.AZURE_NO_DEPLOYMENT
            return None
        if self.api_key is None:
            return None
        auth = headers.get("Authorization")
        if not auth:
            return errors.NO_KEY
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not self._key_matches(token.strip()):
            return errors.BAD_KEY
        return None

    def check_body(self, route: Route, body: Any) -> tuple[str | None, ApiError | None]:
        """Strict: the contract, and the dated model that answers. Lenient: nothing."""
        if not self.strict:
            return None, None
        model = self.catalog.deployments[route.deployment] if route.deployment else None
        served, error = validate_chat(body, self.catalog, deployment_model=model)
        return served or None, error

    def usage(self, body: dict[str, Any], model: str, completion_tokens: int) -> dict[str, Any]:
        """``usage`` with ``prompt_tokens_details`` and ``completion_tokens_details``."""
        tokens = prompt_words(body.get("messages", []))
        if self.cached_fraction is not None:
            cached = int(len(tokens) * self.cached_fraction)
        else:
            cached = self.prefixes.cached_tokens(model, tokens)
        return usage_for(
            len(tokens), completion_tokens, cached=cached, reasoning_model=is_reasoning(model)
        )


def prompt_words(messages: Any) -> list[str]:
    """The prompt as the simulator counts it: one token per word, messages in order."""
    words: list[str] = []
    for msg in messages if isinstance(messages, list) else []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            words.extend(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    words.extend(text.split())
    return words


def estimate_tokens(body: Any) -> int:
    """What a request costs the token bucket up front: its prompt plus its output bound."""
    if not isinstance(body, dict):
        return 0
    bound = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return len(prompt_words(body.get("messages"))) + (bound if isinstance(bound, int) else 0)
