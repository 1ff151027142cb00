"""LISTEN on PostgreSQL channels from one thread, so daemons wake each other without polling.

A grant made by one daemon for another, a job submitted to another daemon, a
cancel asked of the daemon running a job: each is a ``NOTIFY`` on a channel, and
the daemon that cares is woken at once instead of at its next poll. Polling stays
as the safety net (a notification is lost while the connection is down; the
``on_connect`` callback says when to catch up).

One autocommit connection (not from a pool: it is held for good), one daemon
thread looping ``Connection.notifies(timeout=...)``. psycopg keeps notifications
that arrive between two calls of ``notifies`` in a backlog, so the loop loses none
while it runs a callback or its liveness probe. When the server goes away the
loop reconnects with a capped backoff; :meth:`Listener.problem` says why it is
not listening meanwhile (for ``/healthz``). Callbacks run in the listener's
thread: they must only ``tell`` an actor, never block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from loguru import logger
from psycopg import sql

from briefd.store.pg_setup import DEFAULT_BOUND_S, client_bounds, one_line, redact_url

Callback = Callable[[str], None]

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
PROBE_EVERY_S = 10.0
"""A quiet connection is probed (``SELECT 1``) at most this far apart (every ``bound_s``
when shorter): a server that vanished without closing the socket is noticed even when
nothing is notified, within about ``bound_s`` more (keepalives, ``tcp_user_timeout``), so
``/healthz`` says it within seconds."""


class Listener:
    """``LISTEN`` on ``channels`` (name -> callback(payload)) until :meth:`stop`."""

    def __init__(
        self,
        url: str,
        channels: Mapping[str, Callback],
        *,
        on_connect: Callable[[], None] | None = None,
        timeout_s: float = 0.25,
        backoff_max_s: float = BACKOFF_MAX_S,
        name: str = "briefd-listen",
        bound_s: float = DEFAULT_BOUND_S,
    ) -> None:
        if not channels:
            raise ValueError("a Listener needs at least one channel")
        self._url = url
        self._where = redact_url(url)
        self._channels = dict(channels)
        self._on_connect = on_connect
        self._timeout_s = timeout_s
        self._backoff_max_s = backoff_max_s
        self._bound_s = bound_s
        self._probe_every_s = min(PROBE_EVERY_S, max(0.5, bound_s))
        self._stopping = threading.Event()
        self.listening = threading.Event()
        """Set while connected and listening (tests wait on it)."""
        self._problem: str | None = "not connected yet"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Listener:
        """Start the thread (connecting happens in it: this never blocks)."""
        self._thread.start()
        return self

    def problem(self) -> str | None:
        """Why it is not listening now (None when it is)."""
        return None if self.listening.is_set() else self._problem

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop listening; waits at most ``timeout_s``. True if the thread ended."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stopping.is_set():
            try:
                self._listen()
                backoff = BACKOFF_MIN_S
            except psycopg.Error as err:
                was_listening = self.listening.is_set()
                self.listening.clear()
                reason = one_line(err)
                if was_listening or reason != self._problem:
                    logger.warning(
                        "listening on {}: {}; connecting again (up to every {:g}s)",
                        self._where,
                        reason,
                        self._backoff_max_s,
                    )
                self._problem = reason
                if was_listening:
                    backoff = BACKOFF_MIN_S
            except Exception as err:  # a bug must not end the thread silently
                self.listening.clear()
                self._problem = f"listener failed: {err!r}"
                logger.opt(exception=err).error("listener on {}: {!r}", self._where, err)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._backoff_max_s)
        self.listening.clear()
        self._problem = "stopped"

    def _listen(self) -> None:
        kwargs: dict[str, Any] = {
            **client_bounds(self._url, self._bound_s),  # a silent server noticed in seconds
            "autocommit": True,
            "application_name": "briefd-listen",
        }
        with psycopg.connect(self._url, **kwargs) as conn:
            for channel in self._channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            if self._problem not in (None, "not connected yet"):
                logger.info("listening on {} again", self._where)
            self._problem = None
            self.listening.set()
            if self._on_connect is not None:
                self._call(self._on_connect)
            probed = time.monotonic()
            while not self._stopping.is_set():
                for note in conn.notifies(timeout=self._timeout_s):
                    callback = self._channels.get(note.channel)
                    if callback is not None:
                        self._call(callback, note.payload)
                if time.monotonic() - probed >= self._probe_every_s:
                    conn.execute("SELECT 1")
                    probed = time.monotonic()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # one bad callback must not stop the others' wake-ups
            logger.opt(exception=err).error("listener callback failed: {!r}", err)
