"""Prices per model (USD per million tokens) and what a stage's tokens cost.

The table is ``config/prices.toml`` (built in, example list prices) or the
user's own file (``BRIEFD_PRICES``), which replaces it whole: a price the user
did not write is never silently taken from ours. Prices are the user's to keep
current; briefd only multiplies. Costs are rounded to 1e-6 USD (a millionth of
a dollar), the smallest amount a per-million price can make of one token.

What the provider bills, and so what is counted here:

- **Cached input.** Of a call's ``prompt_tokens``, those read from the provider's
  prompt cache (``usage.prompt_tokens_details.cached_tokens``) are billed at a
  fraction of the input price. An entry's ``cached_input`` says how much; without
  it they cost ``input``, so a table written before caching never undercounts.
- **Reasoning tokens.** A reasoning model's hidden thinking
  (``usage.completion_tokens_details.reasoning_tokens``) is already part of
  ``completion_tokens`` at OpenAI and billed as output, so it is priced as output
  and never added a second time.

A model missing from the table, with no ``default`` entry, costs 0; that is
logged once per model and table (a warning), so costs never switch off silently.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from loguru import logger

from briefd.config import ConfigError
from briefd.config.errors import read_toml
from briefd.messages import Usage

BUILT_IN = "prices.toml"
DEFAULT_KEY = "default"
PER = 1_000_000
KEYS = ("input", "cached_input", "output")

# A snapshot's suffix, a date: OpenAI's (gpt-4o-2024-08-06, gpt-4-0613), Anthropic's
# (claude-3-5-haiku-20241022), Mistral's (mistral-large-2411).
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})")


@dataclass(frozen=True)
class Price:
    """USD per million input (prompt), output (completion) and cached input tokens.

    ``cached_input`` None is the input price: a provider without a cache discount.
    """

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for these token counts, rounded to 1e-6; ``cached_tokens`` are of the prompt's."""
        cached = max(0, min(cached_tokens, prompt_tokens))
        cached_price = self.input if self.cached_input is None else self.cached_input
        usd = (
            (prompt_tokens - cached) * self.input
            + cached * cached_price
            + completion_tokens * self.output
        )
        return round(usd / PER, 6)


FREE = Price()
"""The embedded local model's price (and a model the table does not list)."""

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()  # coordinators price on their own threads


def _warn_unpriced(model: str, source: str) -> None:
    """Once per (table, model) and process: a cost of 0 that nobody chose."""
    with _warned_lock:
        if (source, model) in _warned:
            return
        _warned.add((source, model))
    name = repr(model) if model else "'' (no model name to price by)"
    logger.warning(
        "no price for model {} in {} and no default entry: its calls count as $0 "
        "(add it to the table named by BRIEFD_PRICES)",
        name,
        source,
    )


@dataclass(frozen=True)
class PriceTable:
    """Model name -> :class:`Price`; ``source`` names the file, for messages."""

    prices: dict[str, Price] = field(default_factory=dict)
    source: str = "(none)"

    def lookup(self, model: str) -> Price | None:
        """The listed price of ``model``, or None; see :meth:`price` for the rules."""
        if model in self.prices:
            return self.prices[model]
        # A dated snapshot finds its family: the longest listed name the model is that
        # name plus a date (gpt-4o-mini-2024-07-18 -> gpt-4o-mini, never gpt-4o). Other
        # suffixes (gpt-4o-audio-preview, gpt-5.4-mini) are other models at other prices.
        family = [
            n
            for n in self.prices
            if n != DEFAULT_KEY
            and n
            and model.startswith(n)
            and _SNAPSHOT.fullmatch(model[len(n) :]) is not None
        ]
        if family:
            return self.prices[max(family, key=len)]
        # A gateway's name (OpenRouter's "openai/gpt-4o") finds the provider's model.
        if "/" in model:
            return self.lookup(model.rsplit("/", 1)[1])
        return self.prices.get(DEFAULT_KEY)

    def price(self, model: str) -> Price:
        """The exact name; else its family for a dated snapshot (``gpt-4o-2024-08-06`` finds
        ``gpt-4o``); else, for ``gateway/name``, the same for ``name``; else ``default``;
        else 0, warned about once (:func:`_warn_unpriced`)."""
        found = self.lookup(model)
        if found is None:
            _warn_unpriced(model, self.source)
            return FREE
        return found


def _number(value: object, where: str, model: str, key: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(
            f"{where}: [{model!r}] {key}: must be a number >= 0 (USD per million tokens)"
        )
    return float(value)


def _parse(data: dict[str, object], where: str) -> PriceTable:
    prices: dict[str, Price] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: [{model!r}]: must be a table with input and output")
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: [{model!r}]: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})"
            )
        cached = entry.get("cached_input")
        prices[model] = Price(
            input=_number(entry.get("input", 0.0), where, model, "input"),
            output=_number(entry.get("output", 0.0), where, model, "output"),
            cached_input=None if cached is None else _number(cached, where, model, "cached_input"),
        )
    return PriceTable(prices, where)


@lru_cache(maxsize=8)
def load_prices(path: Path | None = None) -> PriceTable:
    """The table from ``path`` (``BRIEFD_PRICES``) or the built-in file; cached per path.

    Raises :class:`ConfigError` naming the file and the key at fault. Called at start
    (``briefd.Pipeline``, the daemon), so a bad table is bad input before any job runs.
    """
    if path is None:
        ref = resources.files("briefd.config").joinpath(BUILT_IN)
        where = f"built-in {BUILT_IN}"
        data = read_toml(None, where, text=ref.read_text(encoding="utf-8"))
    else:
        where = f"prices file {path}"
        data = read_toml(path, where)
    return _parse(data, where)


def usage_cost(usage: Usage, price: Price) -> float:
    """What a stage's reported usage cost: cached input at its price, reasoning as output."""
    return price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)


def stage_cost(usage: Usage, model: str, table: PriceTable, *, local: bool = False) -> float:
    """A stage's cost at ``model``'s price; the embedded local model (``local``) costs 0.

    ``model`` is best the name the server reported (a dated snapshot finds its family).
    """
    return 0.0 if local else usage_cost(usage, table.price(model))


def estimate_cost(prompt_tokens: int, max_tokens: int | None, price: Price) -> float:
    """The most a call may cost before it is made: its prompt (none of it assumed cached),
    and ``max_tokens`` of output."""
    return price.cost(prompt_tokens, max_tokens or 0)
