"""Events of the endpoints a process calls: a stage moving to another endpoint, a breaker.

Which endpoint served what is also on ``StageStarted`` (``endpoint``, ``model``)
and ``StageSucceeded`` (``served_by``); these two say why the route changed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from briefd.messages.base import Event
from briefd.messages.errors import PipelineError


class StageFailedOver(Event):
    """A stage left an endpoint for the next entry of its model alias, at once."""

    type: Literal["StageFailedOver"] = "StageFailedOver"
    job_id: str
    stage: str
    from_route: str = Field(description="endpoint:model it left.")
    to_route: str = Field(description="endpoint:model it calls next.")
    reason: PipelineError = Field(description="What the endpoint it left answered.")
    skipped: bool = Field(
        default=False,
        description="True when it left without calling: that endpoint's breaker is open.",
    )


class EndpointCircuitChanged(Event):
    """An endpoint's circuit breaker changed state.

    ``open``: stages skip it (when their alias has another entry) until ``retry_at``;
    ``half_open``: one probe call may go; ``closed``: it answers again.
    """

    type: Literal["EndpointCircuitChanged"] = "EndpointCircuitChanged"
    endpoint: str
    state: Literal["closed", "open", "half_open"]
    failures: int = Field(description="Consecutive failures counted when it changed.")
    reason: str = Field(default="", description="The last failure's code and message.")
    retry_at: float | None = Field(default=None, description="Unix time of the next probe.")
