"""Ending a stage's in-flight HTTP call from another thread, on connections shared by all.

A cancelled job must not keep paying for (or holding a token for) a call whose
answer nobody wants. ``requests`` has no cancel, and a thread blocked in
``recv`` waiting for a hung server's headers only wakes when its socket is shut
down. So connections, when a request starts on them, register with the calling
stage's :class:`CallAbort`; ``abort()`` shuts that socket down and the blocked
call fails at once.

The registration goes through a thread-local because the request is made in
the stage actor's own thread: :func:`bound` sets it around one call. It is per
request, not per connection, so it works the same on a pooled connection.

Connections are pooled per process (:func:`shared_adapter`): one pool per
endpoint, shared by every stage of every job, so a stage does not pay a TCP
connect (and, for https, a TLS handshake) per call. A pool must never hand out
a connection that an abort may still shut down, or one that an abort did shut
down: when a connection goes back to the pool (:meth:`_AbortableHTTPPool._put_conn`,
in the calling thread) it leaves its abort under the abort's lock, and is closed
instead if the abort came first. urllib3 also drops a pooled connection whose
socket reads EOF (a shut-down socket does) before reusing it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
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

    def cut(self) -> None:
        """End the call in flight now, if any, but not the owner's later calls (a hedge's
        loser). Its connection is not reused: a response not read to its end is closed."""
        with self._lock:
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

    def _release(self, conn: Any) -> bool:
        """Detach ``conn``; True when it may be reused (no abort has, or will, shut it down).

        Under the lock, so an ``abort()`` either comes first (and this says no) or
        finds nothing attached (and leaves the pooled connection alone).
        """
        with self._lock:
            if self._conn is conn:
                self._conn = None
            return not self._aborted


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def bound(abort: CallAbort | None, on_sent: Callable[[], None] | None = None) -> Iterator[None]:
    """Connections used by this thread inside the block register with ``abort``.

    ``on_sent()`` is called once, in this thread, when the first request made in
    the block has been written (the stage reports its start then: the coordinator
    it wakes does not compete with the request for the interpreter).
    """
    _local.abort = abort
    _local.on_sent = on_sent
    try:
        yield
    finally:
        _local.abort = None
        _local.on_sent = None
        if abort is not None:
            abort._detach()


def _sent() -> None:
    on_sent: Callable[[], None] | None = getattr(_local, "on_sent", None)
    if on_sent is None:
        return
    _local.on_sent = None
    try:
        on_sent()
    except Exception as err:  # a report must not fail the call it reports
        logger.opt(exception=err).error("after a request was sent: {!r}", err)


def _register(conn: Any) -> None:
    abort: CallAbort | None = getattr(_local, "abort", None)
    if abort is not None:
        abort._attach(conn)


def _reusable(conn: Any) -> bool:
    abort: CallAbort | None = getattr(_local, "abort", None)
    return conn is None or abort is None or abort._release(conn)


class _AbortableHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)
        _sent()


class _AbortableHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)
        _sent()


class _AbortableHTTPPool(HTTPConnectionPool):
    ConnectionCls = _AbortableHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        if not _reusable(conn):
            conn.close()  # aborted: a new socket next time, never this one
        super()._put_conn(conn)


class _AbortableHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _AbortableHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        if not _reusable(conn):
            conn.close()
        super()._put_conn(conn)


class AbortableAdapter(HTTPAdapter):
    """A requests adapter whose connections can be shut down by a :class:`CallAbort`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _AbortableHTTPPool,
            "https": _AbortableHTTPSPool,
        }


ENDPOINTS_KEPT = 16
"""Endpoints whose pools a process keeps; the least recently used beyond this is closed."""
_pools: OrderedDict[tuple[str, int], AbortableAdapter] = OrderedDict()
_pools_lock = threading.Lock()


def shared_adapter(url: str, size: int) -> AbortableAdapter:
    """The process's adapter (connection pool) for ``url``'s endpoint, keeping ``size``.

    An endpoint is the scheme, host and port (userinfo and path make no other
    connection; the TLS settings a request carries, like ``REQUESTS_CA_BUNDLE``,
    key urllib3's pools below this). ``size`` is the ceiling of concurrent calls
    (``max_concurrent``): the pool keeps that many idle connections. It does not
    block (``pool_block=False``): the rate limiter is the cap, and a call beyond
    ``size`` (a capacity raised at runtime, a lease reaped while its call ends)
    should get a connection of its own, closed after use, rather than wait for
    one, which no deadline of the limiter's or of the call's would see.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    key = (f"{scheme}://{(parts.hostname or '').lower()}:{port}", max(size, 1))
    with _pools_lock:
        adapter = _pools.get(key)
        if adapter is not None:
            _pools.move_to_end(key)
            return adapter
        adapter = AbortableAdapter(pool_connections=2, pool_maxsize=key[1], pool_block=False)
        _pools[key] = adapter
        evicted = [_pools.popitem(last=False)[1] for _ in range(len(_pools) - ENDPOINTS_KEPT)]
    for old in evicted:
        old.close()  # connections in use are closed when they come back
    return adapter


def close_pools() -> None:
    """Close every shared pool (idle connections now, busy ones when they come back)."""
    with _pools_lock:
        adapters = list(_pools.values())
        _pools.clear()
    for adapter in adapters:
        adapter.close()
