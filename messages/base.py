"""The base every briefd message stands on.

Messages cross thread boundaries between actors without being copied (pykka
passes references), so they are frozen. They are also the event log: each one
serialises to one JSON object, so unknown fields are refused rather than
silently carried.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    """An immutable, JSON-serialisable message. Subclasses set ``type``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str


class Event(Message):
    """Something that happened. Events carry the wall-clock time they were made."""

    ts: float = Field(default_factory=time.time, description="Unix time the event was made.")


class Command(Message):
    """Something an actor is asked to do. Commands are imperative (``RequestToken``)."""
