"""How a rate limiter hands its state to a successor: what both limiters do the same way.

A limiter (local or the cluster's) keeps everything in a state object that
outlives it, so that :class:`~briefd.actors.limiter_supervisor.LimiterSupervisor`
can start a successor on it. Two moments need care, and both limiters take
them from here: the successor must not touch the state until the dead one has
left it (``vacated``), and messages the dead one never read must be read first,
in the order they were sent. A limiter stopped on purpose (``retired``) hands
nothing on.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import pykka
from loguru import logger

TAKEOVER_WAIT_S = 5.0
"""How long a successor waits for a dying predecessor to leave the state (it takes micro-
seconds: the predecessor's ``on_stop`` moving its unread messages)."""


class Handed(Protocol):
    """The part of a limiter's state that succession uses."""

    unread: list[Any]  # envelopes a dead limiter never read
    retired: bool  # its owner stopped it on purpose: nothing to hand over
    vacated: threading.Event  # set when its owner has left it


def take_over(actor: pykka.Actor, state: Handed, name: str) -> None:
    """In ``on_start``: wait (bounded) for the predecessor to leave ``state``, hold it, and
    queue the messages it never read ahead of anything new."""
    if not state.vacated.wait(TAKEOVER_WAIT_S):
        logger.error("{}: the previous limiter did not leave its state; taking it", name)
    state.vacated = threading.Event()
    unread, state.unread = state.unread, []
    for envelope in unread:  # in the order they were sent to the dead one
        actor.actor_inbox.put(envelope)


def hand_over(actor: pykka.Actor, state: Handed) -> None:
    """In ``on_stop``/``on_failure``: leave the unread messages to a successor (unless
    retired), then let it in."""
    if not state.retired:
        while not actor.actor_inbox.empty():
            state.unread.append(actor.actor_inbox.get())
    state.vacated.set()
