"""Prices per model (USD per million tokens) and what a stage's tokens cost.

The table is ``config/prices.toml`` (built in, example list prices) or the
user's own file (``BRIEFD_PRICES``), which replaces it whole: a price the user
did not write is never silently taken from ours. Prices are the user's to keep
current; briefd only multiplies. Costs are rounded to 1e-6 USD (a millionth of
a dollar), the smallest amount a per-million price can make of one token.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from briefd.config import ConfigError
from briefd.messages import Usage

BUILT_IN = "prices.toml"
DEFAULT_KEY = "default"
PER = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for these token counts, rounded to 1e-6."""
        return round((prompt_tokens * self.input + completion_tokens * self.output) / PER, 6)


FREE = Price()
"""The embedded local model's price (and the built-in ``default``)."""


@dataclass(frozen=True)
class PriceTable:
    """Model name -> :class:`Price`; ``source`` names the file, for messages."""

    prices: dict[str, Price] = field(default_factory=dict)
    source: str = "(none)"

    def price(self, model: str) -> Price:
        """The exact name, else the longest listed name ``model`` starts with, else ``default``.

        A prefix match lets a dated snapshot (``gpt-4o-mini-2024-07-18``) find its family.
        """
        if model in self.prices:
            return self.prices[model]
        prefixes = [n for n in self.prices if n != DEFAULT_KEY and n and model.startswith(n)]
        if prefixes:
            return self.prices[max(prefixes, key=len)]
        return self.prices.get(DEFAULT_KEY, FREE)


def _parse(data: dict[str, object], where: str) -> PriceTable:
    prices: dict[str, Price] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: [{model!r}]: must be a table with input and output")
        unknown = sorted(set(entry) - {"input", "output"})
        if unknown:
            raise ConfigError(f"{where}: [{model!r}]: unknown key {unknown[0]!r}")
        values = {}
        for key in ("input", "output"):
            value = entry.get(key, 0.0)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"{where}: [{model!r}] {key}: must be a number >= 0 (USD per million tokens)"
                )
            values[key] = float(value)
        prices[model] = Price(**values)
    return PriceTable(prices, where)


@lru_cache(maxsize=8)
def load_prices(path: Path | None = None) -> PriceTable:
    """The table from ``path`` (``BRIEFD_PRICES``) or the built-in file; cached per path.

    Raises :class:`ConfigError` naming the file and the key at fault.
    """
    if path is None:
        ref = resources.files("briefd.config").joinpath(BUILT_IN)
        where, text = f"built-in {BUILT_IN}", ref.read_text(encoding="utf-8")
    else:
        where = f"prices file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{where}: cannot read: {err.strerror or err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: {err}") from None
    return _parse(data, where)


def usage_cost(usage: Usage, price: Price) -> float:
    """What a stage's reported usage cost."""
    return price.cost(usage.prompt_tokens, usage.completion_tokens)


def stage_cost(usage: Usage, model: str, table: PriceTable, *, local: bool = False) -> float:
    """A stage's cost at ``model``'s price; the embedded local model (``local``) costs 0."""
    return 0.0 if local else usage_cost(usage, table.price(model))


def estimate_cost(prompt_tokens: int, max_tokens: int | None, price: Price) -> float:
    """The most a call may cost before it is made: its prompt, and ``max_tokens`` of output."""
    return price.cost(prompt_tokens, max_tokens or 0)
