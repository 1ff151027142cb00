"""Ending a stage's in-flight HTTP call from another thread.

A cancelled job must not keep paying for (or holding a token for) a call whose
answer nobody wants. ``requests`` has no cancel, and a thread blocked in
``recv`` waiting for a hung server's headers only wakes when its socket is shut
down. So each stage's session uses connections that, when a request starts on
them, register with the stage's :class:`CallAbort`; ``abort()`` shuts that
socket down and the blocked call fails at once.

The registration goes through a thread-local because the request is made in
the stage actor's own thread: :func:`bound` sets it around one call.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class CallAbort:
    """Set once (from any thread) to end the owner's current and future calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aborted = False
        self._conn: Any = None

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """End the call in flight, if any; calls made after this fail at once."""
        with self._lock:
            self._aborted = True
            conn = self._conn
        _shutdown(conn)

    def _attach(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            aborted = self._aborted
        if aborted:
            _shutdown(conn)

    def _detach(self) -> None:
        with self._lock:
            self._conn = None


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def bound(abort: CallAbort | None) -> Iterator[None]:
    """Connections used by this thread inside the block register with ``abort``."""
    _local.abort = abort
    try:
        yield
    finally:
        _local.abort = None
        if abort is not None:
            abort._detach()


def _register(conn: Any) -> None:
    abort: CallAbort | None = getattr(_local, "abort", None)
    if abort is not None:
        abort._attach(conn)


class _AbortableHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _AbortableHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _AbortableHTTPPool(HTTPConnectionPool):
    ConnectionCls = _AbortableHTTPConnection


class _AbortableHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _AbortableHTTPSConnection


class AbortableAdapter(HTTPAdapter):
    """A requests adapter whose connections can be shut down by a :class:`CallAbort`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _AbortableHTTPPool,
            "https": _AbortableHTTPSPool,
        }
