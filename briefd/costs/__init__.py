"""The cost ledger's arithmetic: prices per model, the cost of a stage's usage, estimates.

Pure functions and values, no actors and no I/O beyond reading the price file,
so the coordinator (a job's spend, its budget), the root (the daily budget) and
the tests share one definition of what a call costs.
"""

from briefd.costs.prices import (
    FREE,
    Price,
    PriceTable,
    estimate_cost,
    load_prices,
    stage_cost,
    usage_cost,
)

__all__ = [
    "FREE",
    "Price",
    "PriceTable",
    "estimate_cost",
    "load_prices",
    "stage_cost",
    "usage_cost",
]
