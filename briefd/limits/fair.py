"""Which tenant's call goes next: start-time fair queuing over the tokens each has used.

A service shared by several tenants must not serve them oldest-first: a tenant
that submits 1,000 jobs would hold every other tenant's single job behind its
whole batch. So before :func:`briefd.limits.order.pick` chooses a call, the
limiter chooses a *tenant*, and ``pick`` then chooses among that tenant's calls
by today's order (priority with aging, oldest job, critical path), so a tenant's
own priorities still work inside its share.

**The algorithm: start-time fair queuing** (SFQ, Goyal, Vin & Cheng 1996), with
the cost of a call in *tokens*, not requests (a tenant of long prompts is not
served as many tokens as one of short prompts for the same number of calls):

* each tenant ``t`` has a *finish tag* ``F_t``: the tokens it was granted, divided
  by its weight, counted from when it last became busy;
* the system has a *virtual time* ``V``: the start tag of the last grant;
* a waiting tenant's *start tag* is ``S_t = max(V, F_t)``; the tenant with the
  least ``S_t`` goes next (ties: every tied tenant's calls go to ``pick`` together,
  so with one tenant the order is exactly today's);
* a grant of ``c`` tokens sets ``V = S_t`` and ``F_t = S_t + c / w_t``; ``c`` is the
  call's ``est_tokens`` at the grant (scaled by the ratio of used to estimated tokens
  learned from settled calls: :meth:`FairShare.cost`), and the call's release
  **settles** it: ``F_t += (used - c) / w_t`` with the tokens its server reported
  (``usage``).

Why SFQ and not deficit round robin: DRR needs a quantum at least as large as
the largest call to be O(1), and serves a round at a time, so a tenant arriving
mid-round waits for the round; SFQ serves the least-served tenant at every
grant, which is what lets a newcomer in at the very next grant. It needs
no quantum, costs one comparison per waiting tenant, and takes settled costs
after the fact (a correction to ``F_t``) without any per-round bookkeeping.
Why not virtual *finish* time (WFQ): it orders by the cost of the call about to
go, which is only an estimate here; start tags do not depend on it.

**No banked credit.** ``S_t = max(V, F_t)``: a tenant that was idle (its ``F_t``
fell behind ``V``) comes back at ``V``, level with the busiest tenant's start,
never with a burst of saved-up share. A tenant that used *more* than its share
(``F_t > V``) waits until the others catch up; that debt is forgotten after
:data:`FORGIVE_S` without a grant, so the state stays small: a tenant is kept
only while it carries information (``F_t > V``) or may still settle a call in
flight (:data:`SETTLE_GRACE_S`), and never more than :data:`MAX_TENANTS`.

Plain data (a dict of floats, to and from JSON): one daemon's limiter keeps it in
its ``LimiterState``; a cluster keeps one per endpoint in its limiter row, so
every daemon's grant round reads and updates the same tags under that row's lock.
Times are any clock that only goes forward (monotonic in a daemon; the
database's in a cluster).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from briefd.limits.order import Latencies, Waiting, pick

SETTLE_GRACE_S = 300.0
"""A tenant level with ``V`` is kept this long after its last grant, for its calls' settling."""
FORGIVE_S = 600.0
"""A tenant that used more than its share is forgiven the rest after this long without a grant."""
MAX_TENANTS = 4096
"""A bound on tenants remembered (the least-served beyond it are forgotten: they start at V)."""
PRUNE_EVERY = 256
"""Grants between two prunings of the forgettable tenants."""


RATIO_ALPHA = 0.05
"""Weight of the newest settled call in the learned ratio of used to estimated tokens."""


@dataclass
class FairShare:
    """The finish tag and last grant time of each tenant that carries information, and V."""

    vtime: float = 0.0
    finish: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    grants: int = 0
    ratio: float = 1.0  # tokens used per token estimated, learned from settled calls
    learned: int = 0  # settled calls it was learned from

    def cost(self, est_tokens: int) -> float:
        """What a grant is charged until its release settles it: its estimate (at least 1:
        an estimate of 0 must still cost something) times the learned ratio of used to
        estimated tokens. ``est_tokens`` counts ``max_tokens`` in full, for BRIEFD_TPM's
        sake; charged as it is, a tenant's call in flight would weigh several times what
        calls use, and a newcomer's second call would wait behind every settled call of
        the tenant it is sharing with."""
        return max(1, est_tokens) * self.ratio

    def start(self, tenant: str) -> float:
        """``tenant``'s start tag now: its finish tag, but never behind V."""
        f = self.finish.get(tenant)
        return self.vtime if f is None or f < self.vtime else f

    def charge(self, tenant: str, weight: float, tokens: float, now: float) -> None:
        """A grant of ``tokens`` (:meth:`cost` of its estimate) to ``tenant`` of ``weight``."""
        s = self.start(tenant)
        self.vtime = s
        self.finish[tenant] = s + tokens / _positive(weight)
        self.seen[tenant] = now
        self.grants += 1
        if self.grants % PRUNE_EVERY == 0 or len(self.finish) > MAX_TENANTS:
            self.prune(now)

    def settle(
        self,
        tenant: str,
        weight: float,
        charged: float,
        used: int | None,
        now: float,
        *,
        est_tokens: int = 0,
    ) -> None:
        """A call ended: correct its charge from ``charged`` to the ``used`` tokens its server
        reported (and learn the ratio of used to ``est_tokens``). ``None`` (no usage: a
        failure, a server that says nothing) keeps the charge: the grant held one of K
        whether or not it produced tokens."""
        if used is None:
            return
        if est_tokens > 0:  # a running mean over the first calls, then a moving average
            seen = min(4.0, max(0.01, used / est_tokens))
            self.learned = min(self.learned + 1, 1_000_000)
            self.ratio += max(RATIO_ALPHA, 1 / self.learned) * (seen - self.ratio)
        if tenant not in self.finish:
            return
        self.finish[tenant] += (used - charged) / _positive(weight)
        self.seen[tenant] = max(self.seen.get(tenant, now), now)

    def prune(self, now: float) -> None:
        """Forget tenants that carry no information: level with V and quiet for
        :data:`SETTLE_GRACE_S`, or quiet for :data:`FORGIVE_S` whatever their debt; then,
        above :data:`MAX_TENANTS`, the least served."""
        for t in list(self.finish):
            quiet = now - self.seen.get(t, now)
            if quiet > FORGIVE_S or (self.finish[t] <= self.vtime and quiet > SETTLE_GRACE_S):
                del self.finish[t]
                self.seen.pop(t, None)
        if len(self.finish) > MAX_TENANTS:
            keep = sorted(self.finish, key=self.finish.__getitem__)[-MAX_TENANTS:]
            self.finish = {t: self.finish[t] for t in keep}
            self.seen = {t: self.seen[t] for t in keep if t in self.seen}

    def to_json(self) -> str:
        """The state as JSON (a cluster's endpoint row keeps it)."""
        return json.dumps(
            {
                "v": self.vtime,
                "f": self.finish,
                "s": self.seen,
                "n": self.grants,
                "r": self.ratio,
                "l": self.learned,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> FairShare:
        """The state from :meth:`to_json`; a damaged or missing value starts afresh (every
        tenant at V: nobody is owed anything, nobody is in debt)."""
        try:
            raw = json.loads(text or "{}")
            finish = {str(k): float(v) for k, v in dict(raw.get("f", {})).items()}
            seen = {str(k): float(v) for k, v in dict(raw.get("s", {})).items()}
            vtime, grants = float(raw.get("v", 0.0)), int(raw.get("n", 0))
            ratio, learned = float(raw.get("r", 1.0)), int(raw.get("l", 0))
        except (ValueError, TypeError, AttributeError):
            return cls()
        if not all(math.isfinite(v) for v in (vtime, ratio, *finish.values())) or ratio <= 0:
            return cls()
        return cls(vtime, finish, seen, grants, ratio, learned)


def _positive(weight: float) -> float:
    return weight if weight > 0 and math.isfinite(weight) else 1.0


def pick_fair(waiting: list[Waiting], now: float, latencies: Latencies, share: FairShare) -> int:
    """The index in ``waiting`` (non-empty) of the call to serve next: among the tenants
    with the least start tag, the first by :func:`briefd.limits.order.pick`. With one
    tenant waiting this is ``pick`` itself (one extra pass, comparing a string)."""
    first = waiting[0].request.tenant
    for w in waiting:
        if w.request.tenant != first:
            break
    else:
        return pick(waiting, now, latencies)
    starts: dict[str, float] = {}
    best = math.inf
    chosen: list[int] = []
    for i, w in enumerate(waiting):
        t = w.request.tenant
        s = starts.get(t)
        if s is None:
            s = starts[t] = share.start(t)
        if s < best:
            best, chosen = s, [i]
        elif s == best:
            chosen.append(i)
    return chosen[pick([waiting[i] for i in chosen], now, latencies)]


def next_to_admit(
    queued_tenants: Iterable[str],
    active: Mapping[str, int],
    total: int,
    window: int,
    weights: Mapping[str, float] | None = None,
) -> int | None:
    """Which queued job (by index, in the queue's order) gets a coordinator next; None: none.

    While fewer than ``window`` jobs run: the first queued job of the tenant whose next
    job would hold the fewest places per weight (``(running + 1) / weight``; ties: the
    tenant whose first job comes first), so a place that frees goes to the tenant with
    the least of the window for its weight, not to the oldest job: a tenant with nothing
    running goes before another tenant's Nth job, and weights share the window. When the
    window is full: the first job of a tenant with nothing running. Without that, a
    tenant's single job waited for a place behind another tenant's 1,000 before the
    limiter's fair share could see a single call of it. The window is exceeded by at most
    one job per tenant. Within a tenant the queue's order holds; with one tenant this is
    the FIFO it replaces. One pass over the queue.
    """
    firsts: dict[str, int] = {}
    for i, tenant in enumerate(queued_tenants):
        if tenant not in firsts:
            firsts[tenant] = i
            if total >= window and not active.get(tenant):
                return i
    if not firsts or total >= window:
        return None
    if len(firsts) == 1:
        return next(iter(firsts.values()))
    w = weights or {}
    return min(((active.get(t, 0) + 1) / _positive(w.get(t, 1.0)), i) for t, i in firsts.items())[1]
