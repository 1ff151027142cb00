"""The models a simulated provider serves, and the ``usage`` it reports for them.

OpenAI answers a request for ``gpt-4o`` with the dated snapshot that served it
(``gpt-4o-2024-08-06``); clients that price by the served name must cope, so the strict
simulator does the same. Cached prompt tokens follow OpenAI's documented rule (from
1,024 prompt tokens, in 128-token steps, keyed on the prompt's prefix) or, for tests
and benchmarks that want a fixed share, a ``cached_fraction``. Reasoning models report
``reasoning_tokens`` inside ``completion_tokens``, as OpenAI's do. All of it is a
deterministic function of what the server has seen, so tests can assert exact numbers.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The snapshot each alias resolves to (OpenAI's model pages); unknown names answer as is.
DATED_NAMES: dict[str, str] = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
}
DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o4-mini")
MODEL_CREATED = 1_715_367_049  # a fixed `created` stamp: the list is the same every run
CACHE_MIN_TOKENS = 1024  # OpenAI caches prompts from this length ...
CACHE_STEP_TOKENS = 128  # ... in steps of this many tokens
REASONING_PER_OUTPUT = 2  # hidden reasoning tokens per visible output token (reasoning models)
_MAX_PREFIXES = 100_000


def is_reasoning(model: str) -> bool:
    """o-series and gpt-5 models think before they answer (and refuse some sampling knobs)."""
    return model.startswith(("o1", "o3", "o4", "gpt-5"))


@dataclass(frozen=True, slots=True)
class Catalog:
    """Served model names → the dated name an answer reports; Azure deployments → model."""

    models: Mapping[str, str]
    deployments: Mapping[str, str]

    @classmethod
    def build(
        cls,
        models: Sequence[str] | Mapping[str, str] | None,
        deployments: Mapping[str, str] | None,
    ) -> Catalog:
        """From names (dated by :data:`DATED_NAMES`) or an explicit name → dated map.

        Without ``deployments``, every served model is also a deployment of that name.
        """
        if models is None:
            models = DEFAULT_MODELS
        if isinstance(models, Mapping):
            served = dict(models)
        else:
            served = {name: DATED_NAMES.get(name, name) for name in models}
        deps = dict(deployments) if deployments is not None else {m: m for m in served}
        for dep, model in deps.items():
            if model not in served:
                raise ValueError(f"deployment {dep!r} names model {model!r}, which is not served")
        return cls(served, deps)

    def resolve(self, model: str) -> str | None:
        """The dated name that answers ``model`` (an alias or a dated name), None if unknown."""
        if model in self.models:
            return self.models[model]
        return model if model in self.models.values() else None

    def listing(self) -> dict[str, object]:
        """``GET /v1/models`` as OpenAI answers it (``ListModelsResponse`` of ``Model``s)."""
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}
                for name in self.models
            ],
        }


class PrefixCache:
    """Which prompt prefixes were seen, in 128-token blocks, the way OpenAI's cache keys them.

    A prompt's cached tokens are the longest run of leading blocks some earlier prompt
    (to the same model) shared. Bounded, oldest forgotten first.
    """

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def cached_tokens(self, model: str, tokens: Sequence[str]) -> int:
        """Tokens served from cache for this prompt, then remember its prefixes."""
        if len(tokens) < CACHE_MIN_TOKENS:
            return 0
        digest = hashlib.sha256(model.encode())
        keys: list[bytes] = []
        for start in range(0, len(tokens) - CACHE_STEP_TOKENS + 1, CACHE_STEP_TOKENS):
            digest.update("\x00".join(tokens[start : start + CACHE_STEP_TOKENS]).encode())
            keys.append(digest.copy().digest())
        with self._lock:
            hits = 0
            for key in keys:
                if key not in self._seen:
                    break
                hits += 1
            for key in keys:
                self._seen[key] = None
                self._seen.move_to_end(key)
            while len(self._seen) > _MAX_PREFIXES:
                self._seen.popitem(last=False)
        return hits * CACHE_STEP_TOKENS


def usage_for(
    prompt_tokens: int, visible_tokens: int, *, cached: int, reasoning_model: bool
) -> dict[str, object]:
    """A ``CompletionUsage`` with the details OpenAI reports (cached, reasoning)."""
    reasoning = visible_tokens * REASONING_PER_OUTPUT if reasoning_model else 0
    completion = visible_tokens + reasoning
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
