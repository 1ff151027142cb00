"""One attempt on the wire: TLS to the pinned address under the URL's name, a name that
turned private since submission refused at the attempt, credentials kept out of errors.

The receiver is a real server on 127.0.0.1 (HTTPS with a ``trustme`` certificate for a
made-up name); names resolve through a resolver the test gives the sender.
"""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trustme
from pydantic import SecretStr
from standardwebhooks import Webhook

from briefd.webhooks.outbox import Due
from briefd.webhooks.retry import RetryPolicy
from briefd.webhooks.send import Sender

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = '{"type":"JobCompleted","timestamp":"2026-01-01T00:00:00Z","data":{"job_id":"s-1"}}'


class _Server:
    def __init__(self, tls: ssl.SSLContext | None, status: int = 200) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                Webhook(SECRET).verify(body, headers)
                outer.seen.append(headers)
                self.send_response(status)
                self.send_header("content-length", "5")
                self.end_headers()
                self.wfile.write(b"nope\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https(ca: trustme.CA) -> Iterator[_Server]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(server_ctx)
    server = _Server(server_ctx)
    yield server
    server.close()


def table(mapping: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> Sequence[str]:
        return mapping[host]

    return resolve


def due(url: str) -> Due:
    return Due("msg_s1", "s-1", "JobCompleted", BODY, url, 0, 0.0)


def test_https_goes_to_the_checked_address_and_verifies_the_urls_name(
    ca: trustme.CA, https: _Server
) -> None:
    """The connection is to 127.0.0.1 (as resolved), TLS checks the certificate for
    hooks.test, the Host header is the URL's: the receiver verifies the signature."""
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    sender = Sender(
        SecretStr(SECRET),
        RetryPolicy(),
        allow_private=True,
        ssl_context=client_ctx,
        resolver=table({"hooks.test": ["127.0.0.1"]}),
    )
    result = sender.attempt(due(f"https://hooks.test:{https.port}/in"))
    assert (result.outcome, result.status, result.error) == ("delivered", 200, "")
    assert https.seen[0]["host"] == f"hooks.test:{https.port}"
    assert https.seen[0]["webhook-id"] == "msg_s1"
    wrong = Sender(
        SecretStr(SECRET),
        RetryPolicy(),
        allow_private=True,
        ssl_context=client_ctx,
        resolver=table({"other.test": ["127.0.0.1"]}),
    )
    failed = wrong.attempt(due(f"https://other.test:{https.port}/in"))
    assert failed.outcome == "retry" and failed.status is None
    assert "certificate" in failed.error.lower() or "hostname" in failed.error.lower()


def test_a_name_that_now_resolves_to_a_private_address_is_refused_at_the_attempt() -> None:
    """DNS rebinding: the check is made again before each attempt, on the address used."""
    sender = Sender(
        SecretStr(SECRET),
        RetryPolicy(initial_s=1, max_s=1),
        allow_private=False,
        resolver=table({"hooks.example.com": ["127.0.0.1"]}),
    )
    result = sender.attempt(due("http://hooks.example.com/in"))
    assert result.outcome == "retry" and result.status is None
    assert "refused at the attempt" in result.error and "loopback" in result.error


def test_errors_name_the_status_but_not_the_urls_secrets() -> None:
    """A failed attempt's error is one line: the status and the receiver's words, never
    the URL's password or query token."""
    server = _Server(None, status=500)
    try:
        sender = Sender(SecretStr(SECRET), RetryPolicy(), allow_private=True)
        url = f"http://bob:pa55word99@127.0.0.1:{server.port}/in?token=t0k3nt0k3n"
        result = sender.attempt(due(url))
        assert result.outcome == "retry" and result.status == 500
        assert result.error == "HTTP 500: nope"
        assert server.seen[0]["authorization"].startswith("Basic ")
    finally:
        server.close()
    refused = sender.attempt(due("http://bob:pa55word99@127.0.0.1:9/x?token=t0k3nt0k3n"))
    assert refused.status is None and refused.error
    assert "pa55word99" not in refused.error and "t0k3nt0k3n" not in refused.error
