"""The HTTP API's outer walls, below the application: the socket, its names, slow clients.

* :func:`bind_loopback` listens on a loopback address only.
* :func:`allowed_hosts` is the set of ``Host`` values that name this socket
  (the bound address or ``localhost``, with the port). The API refuses any
  other (DNS rebinding: a web page whose name resolves to 127.0.0.1 still
  sends its own name); see ``_Guard`` in :mod:`briefd.daemon.http_api`.
* :func:`deadline_protocol` is uvicorn's h11 protocol with two deadlines, so
  that a client cannot hold a connection (a file descriptor, a task) by
  sending nothing or a byte at a time (slowloris): a whole request, head and
  body, must arrive within ``read_timeout_s`` of the connection opening or of
  the previous response; an idle keep-alive connection is closed after
  ``keep_alive_s``. uvicorn alone has only the second, and arms it only after
  a first response, so a connection that never sends a request stays open.
  It also sets TCP_NODELAY on each accepted connection (``_no_delay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from typing import Any

import h11
from loguru import logger
from uvicorn.protocols.http.h11_impl import H11Protocol

from briefd.config import ConfigError

READ_TIMEOUT_S = 10.0
"""Seconds a client has to send a whole request (head and body)."""
KEEP_ALIVE_S = 5.0
"""Seconds an idle keep-alive connection stays open between requests."""
TRANSPORT = "briefd.transport"
"""Key of the connection's transport in each request's ``scope["state"]``: an event stream
drops a client too slow to read it (``transport.abort()``: nothing more is flushed)."""
_WHOLE = (h11.DONE, h11.MUST_CLOSE)  # the client's side of a request that has fully arrived


def bind_loopback(listen: str) -> socket.socket:
    """A listening socket on ``host:port`` (``BRIEFD_LISTEN``); loopback addresses only."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"BRIEFD_LISTEN: {listen!r} is not host:port (e.g. 127.0.0.1:8765)")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"BRIEFD_LISTEN: {host!r} is not an IP address") from None
    if not addr.is_loopback:
        raise ConfigError(
            f"BRIEFD_LISTEN: {host} is not a loopback address; the API listens on "
            "127.0.0.1 only (put a reverse proxy with TLS in front to expose it)"
        )
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_text)))
    except OSError as err:
        sock.close()
        raise ConfigError(f"BRIEFD_LISTEN: cannot listen on {listen}: {err.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def allowed_hosts(sock: socket.socket) -> frozenset[str]:
    """The ``Host`` header values (lower case) that name ``sock``: its address or localhost,
    with the port (without it too on port 80, where clients leave it out)."""
    host, port = sock.getsockname()[:2]
    names = [f"[{host}]" if ":" in host else host, "localhost"]
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts.update(names)
    return frozenset(h.lower() for h in hosts)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Switch Nagle's algorithm off on an accepted connection.

    h11 writes a response's head and body separately; with Nagle on, the body
    waits for the ACK of the head, which a keep-alive client delays ~40 ms, so
    every request after a connection's first took that long. asyncio sets
    TCP_NODELAY itself only on sockets whose ``proto`` is IPPROTO_TCP, and a
    socket made as ``socket(AF_INET, SOCK_STREAM)`` (ours, pre-bound, and those
    it accepts) says 0.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def deadline_protocol(read_timeout_s: float, keep_alive_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections too slow to send a request, or idle."""

    class DeadlineH11Protocol(H11Protocol):
        """One connection. The read deadline runs while the server waits for a request:
        from the connection's start, and again from each response, until a request has
        arrived whole (a request being served, however long, is not the client's delay)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = keep_alive_s  # type: ignore[assignment]  # call_later: float
            self._deadline: asyncio.TimerHandle | None = None
            self.app_state = dict(self.app_state)  # this connection's, copied into each scope

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            _no_delay(transport)
            self.app_state[TRANSPORT] = transport
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._disarm_if_whole()

        def on_response_complete(self) -> None:
            self._arm()  # the next request (or the rest of a body left unread) starts now
            super().on_response_complete()
            self._disarm_if_whole()  # a pipelined request may already be whole

        def _disarm_if_whole(self) -> None:
            cycle = self.cycle
            if (
                cycle is not None
                and not cycle.response_complete
                and self.conn.their_state in _WHOLE
            ):
                self._disarm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                logger.debug(
                    "closing a connection from {}: no whole request in {:g}s",
                    self.client,
                    read_timeout_s,
                )
                self.transport.close()

    return DeadlineH11Protocol
