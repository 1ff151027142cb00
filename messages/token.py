"""Execution tokens: the rate limiter's commands and events.

A token is the right to have one HTTP call in flight. Requesters are named by
their actor URN (``ActorRef.actor_urn``) so that these messages stay plain data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from briefd.messages.base import Command, Event
from briefd.messages.job import Frozen

Outcome = Literal["unknown", "success", "rate_limited", "overloaded", "other"]
"""How a call ended, for the limiter's window: ``rate_limited`` is 429/503, ``overloaded`` a
timeout or another 5xx, ``other`` any other failure (it says nothing about the server's load)."""


class RateLimits(Frozen):
    """What a server said about its budgets, in seconds from when the answer arrived.

    Parsed from ``x-ratelimit-*``, ``retry-after(-ms)`` and ``anthropic-ratelimit-*``
    headers (:mod:`briefd.limits.headers`); ``None`` where the server said nothing.
    """

    limit_requests: int | None = Field(default=None, description="The requests budget's size.")
    limit_tokens: int | None = Field(default=None, description="The tokens budget's size.")
    remaining_requests: int | None = Field(default=None, description="Requests left.")
    remaining_tokens: int | None = Field(default=None, description="Tokens left.")
    reset_requests_s: float | None = Field(default=None, description="Until requests refill.")
    reset_tokens_s: float | None = Field(default=None, description="Until tokens refill.")
    retry_after_s: float | None = Field(default=None, description="The server's Retry-After.")


class RequestToken(Command):
    """Ask for a token. Answered with ``TokenGranted`` told to ``requester``.

    ``priority`` is the length of the longest path from this stage to the end of
    its job's DAG: longer paths are served first, so the critical path is not
    delayed by stages that nothing waits for.
    """

    type: Literal["RequestToken"] = "RequestToken"
    job_id: str
    stage: str
    endpoint: str = Field(default="", description="The endpoint's name ('' = the only one).")
    requester: str = Field(description="The requesting actor's URN; the grant is told to it.")
    priority: int = Field(default=0, description="Stages left on its longest DAG path.")
    admitted_at: float = Field(
        default=0.0,
        description="When its job was submitted (Unix time, s; 0: unknown): older jobs first. "
        "A job resumed after a restart keeps its submission time, so it keeps its place.",
    )
    job_priority: int = Field(default=0, description="The job's priority: higher first.")
    downstream: dict[str, list[str]] = Field(
        default_factory=dict,
        description="This stage and every stage after it, each with its direct dependents: "
        "the limiter weighs the remaining path by learned stage latencies.",
    )
    est_tokens: int = Field(default=0, ge=0, description="Estimated tokens (for BRIEFD_TPM).")
    tenant: str = Field(
        default="default", description="The job's tenant: waiting calls are shared fairly by it."
    )
    weight: float = Field(
        default=1.0, gt=0, description="The tenant's weight in the fair share (1 = equal)."
    )


class TokenGranted(Event):
    """A token is leased to ``job_id``/``stage`` until it is released or its holder dies."""

    type: Literal["TokenGranted"] = "TokenGranted"
    job_id: str
    stage: str
    endpoint: str = Field(default="", description="The endpoint's name ('' = the only one).")
    lease_id: int = Field(description="Names the lease in its ReleaseToken.")
    in_use: int = Field(description="Tokens leased after this grant.")
    capacity: int = Field(description="Tokens in all (BRIEFD_MAX_CONCURRENT).")
    waiting: int = Field(default=0, description="Requests still queued after this grant.")
    waited_ms: int = Field(default=0, description="How long this request queued.")
    window: int | None = Field(default=None, description="Calls allowed in flight now (W).")


class ReleaseToken(Command):
    """Give a leased token back, saying how the call ended (the limiter adapts to it)."""

    type: Literal["ReleaseToken"] = "ReleaseToken"
    job_id: str
    stage: str
    lease_id: int
    outcome: Outcome = Field(default="unknown", description="How the call ended.")
    used_tokens: int | None = Field(
        default=None, ge=0, description="Tokens the server reported (settles BRIEFD_TPM)."
    )
    limits: RateLimits | None = Field(default=None, description="The server's rate headers.")


class CancelTokenRequest(Command):
    """Withdraw a waiting request (or release a lease) of a stage that is going away."""

    type: Literal["CancelTokenRequest"] = "CancelTokenRequest"
    job_id: str
    stage: str
    requester: str


class TokenReleased(Event):
    """A lease ended; ``reclaimed`` when its holder died without releasing it."""

    type: Literal["TokenReleased"] = "TokenReleased"
    job_id: str
    stage: str
    lease_id: int = Field(description="The lease that ended.")
    in_use: int = Field(description="Tokens leased after this release.")
    capacity: int = Field(description="Tokens in all.")
    waiting: int = Field(default=0, description="Requests queued when the lease ended.")
    reclaimed: bool = Field(default=False, description="The holder died without releasing.")
    window: int | None = Field(default=None, description="Calls allowed in flight now (W).")


class ReportRateLimit(Command):
    """A stage got 429: hold all grants until the server's ``Retry-After`` has passed."""

    type: Literal["ReportRateLimit"] = "ReportRateLimit"
    job_id: str
    stage: str
    endpoint: str = Field(default="", description="The endpoint's name ('' = the only one).")
    retry_after_s: float = Field(ge=0)


class RateLimitCooldown(Event):
    """Grants are paused until ``until`` (Unix time) because the API said 429."""

    type: Literal["RateLimitCooldown"] = "RateLimitCooldown"
    job_id: str
    stage: str
    endpoint: str = Field(default="", description="The endpoint's name ('' = the only one).")
    retry_after_s: float = Field(description="The server's Retry-After, clamped.")
    until: float = Field(description="Unix time grants resume.")


class SetCapacity(Command):
    """Change the number of tokens (a live reload). Leases above it drain naturally."""

    type: Literal["SetCapacity"] = "SetCapacity"
    capacity: int = Field(ge=1)
