"""The simulator's socket server: its shared state, and open sockets closed on stop.

Apart from :mod:`briefd.sim.server` (what a request gets) because this is plumbing:
the stdlib server, tracking every client socket so :meth:`SimHTTPServer.close_connections`
ends idle keep-alive threads at once.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from briefd.sim.faults import SimLedger
from briefd.sim.gateway import Gateway
from briefd.sim.llama import LlamaMode


class SimHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its ledger and tracks open sockets for a prompt stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        addr: tuple[str, int],
        ledger: SimLedger,
        stop: threading.Event,
        gateway: Gateway,
        handler: type[BaseHTTPRequestHandler],
        llama: LlamaMode | None = None,
    ) -> None:
        self.ledger = ledger
        self.gateway = gateway
        self.llama = llama or LlamaMode()
        self.stop_event = stop
        self.request_ids = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open client socket so idle keep-alive handler threads end too."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients vanishing is part of the job; only real bugs get a traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)
