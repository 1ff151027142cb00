"""briefd's actors: coordinator, stage, rate limiter, metrics (one per module)."""

from briefd.actors.coordinator import CoordinatorActor
from briefd.actors.metrics import MetricsActor, MetricsSnapshot
from briefd.actors.rate_limiter import LimiterStats, RateLimiterActor
from briefd.actors.stage import StageActor

__all__ = [
    "CoordinatorActor",
    "LimiterStats",
    "MetricsActor",
    "MetricsSnapshot",
    "RateLimiterActor",
    "StageActor",
]
