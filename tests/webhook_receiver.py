"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that checks every delivery
with the Standard Webhooks library (``standardwebhooks.Webhook.verify``: the signature over
``id.timestamp.body``, the timestamp within 5 minutes) and keeps what it got.

It can be down (nothing listens on its port: connections are refused) and come back on the
same port, and it can answer a chosen status. Waits are on a condition, never a sleep.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from daemon_helpers import free_port
from standardwebhooks import Webhook


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    id: str
    timestamp: str
    body: dict[str, Any]
    verified: bool
    status: int
    path: str
    headers: dict[str, str]


class Receiver:
    """``with Receiver(secret) as r:`` up on a free port; ``r.down()``, ``r.up()`` again."""

    def __init__(self, secret: str, port: int | None = None, status: int = 204) -> None:
        self.secret = secret
        self.port = port or free_port()
        self.status = status
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/briefd"

    def __enter__(self) -> Receiver:
        return self.up()

    def __exit__(self, *_: object) -> None:
        self.down()

    def up(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except Exception:
                    verified = False
                status = receiver.status
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                got = Received(
                    id=headers.get("webhook-id", ""),
                    timestamp=headers.get("webhook-timestamp", ""),
                    body=json.loads(body or b"null"),
                    verified=verified,
                    status=status,
                    path=self.path,
                    headers=headers,
                )
                with receiver._cond:
                    receiver.received.append(got)
                    receiver._cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Received]:
        """Deliveries answered 2xx."""
        with self._cond:
            return [r for r in self.received if 200 <= r.status < 300]

    def wait(self, n: int, timeout_s: float) -> list[Received]:
        """Until at least ``n`` deliveries were accepted (returns them; fewer at the deadline)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                got = [r for r in self.received if 200 <= r.status < 300]
                left = deadline - time.monotonic()
                if len(got) >= n or left <= 0:
                    return got
                self._cond.wait(left)
