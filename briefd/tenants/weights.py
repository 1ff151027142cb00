"""The tenants' weights as the daemon last read them, for the fair share of waiting calls.

A stage puts its tenant's weight on each ``RequestToken`` (``weight_of``); the
root's :class:`~briefd.tenants.gate.TenantGate` refreshes the table from the
store every few seconds (:func:`set_weights`). Process-wide on purpose: the
weight is read where a token is asked for, far from where tenants are read,
and one daemon is one process (two daemons in one test process share it,
which only matters if their stores disagree).
"""

from __future__ import annotations

_weights: dict[str, float] = {}


def set_weights(weights: dict[str, float]) -> None:
    """Replace the table (one assignment: readers see the old or the new, never a mix)."""
    global _weights
    _weights = dict(weights)


def weight_of(tenant: str) -> float:
    """``tenant``'s weight (1.0 if unknown)."""
    return _weights.get(tenant, 1.0)
