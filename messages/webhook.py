"""Webhook deliveries: one attempt's outcome (an event), and a delivery as the API shows it.

A delivery is one event of one job pushed to one URL (Standard Webhooks: signed,
retried, at least once, the same ``webhook-id`` on every attempt). It lives in
the journal's outbox (:mod:`briefd.webhooks.outbox`); these messages carry its
id, never its URL's credentials nor the signing secret.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from briefd.messages.base import Event
from briefd.messages.job import Frozen

WEBHOOK_EVENTS = ("StageStarted", "StageSucceeded", "StageFailed", "JobCompleted")
"""The event types a webhook may ask for: those the journal commits, so each delivery is
written in the same transaction as the event it reports."""


class WebhookAttempted(Event):
    """One attempt to deliver a webhook ended (sent by the sender's thread, then logged)."""

    type: Literal["WebhookAttempted"] = "WebhookAttempted"
    job_id: str
    delivery_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str = Field(description="The event delivered (JobCompleted, StageSucceeded...).")
    attempt: int = Field(ge=1, description="This attempt's number, 1 for the first.")
    outcome: Literal["delivered", "retry", "gave_up", "expired"] = Field(
        description="delivered (2xx); retry (another attempt later); gave_up (410 Gone); "
        "expired (BRIEFD_WEBHOOK_RETRY_FOR_S passed without a 2xx)."
    )
    status: int | None = Field(default=None, description="The receiver's HTTP status, if any.")
    error: str = Field(default="", description="Why it failed: one line, redacted.")
    retry_in_s: float | None = Field(default=None, description="When the next attempt is due.")
    elapsed_ms: int = Field(default=0, ge=0, description="The HTTP call, connect to answer.")


class WebhookDelivery(Frozen):
    """A job's delivery as ``GET /v1/jobs/{id}`` lists it (``url`` without credentials)."""

    id: str = Field(description="The webhook-id header.")
    event: str
    url: str = Field(description="The receiver, its user, password and query values hidden.")
    state: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_status: int | None = Field(default=None, description="The last attempt's HTTP status.")
    last_error: str | None = Field(default=None, description="The last failure, one line.")
    next_at: float | None = Field(default=None, description="Unix time of the next attempt.")
    delivered_at: float | None = None
    created_at: float
