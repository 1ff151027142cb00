"""The daemon API's outer walls: Host and Origin checks, and deadlines for slow clients.

Each test runs the daemon's real :class:`~briefd.daemon.http_api.ApiServer` (uvicorn on a
loopback socket, the same class ``briefd serve`` uses) in-process over a stub backend, so
the walls are exercised over real TCP without starting actors or a journal. Waits are
socket timeouts and ``select``, never sleeps.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from briefd.daemon.http_api import ApiServer, bind_loopback
from faults.api_stub import TOKEN, StubBackend, auth

READ_TIMEOUT_S = 0.5
KEEP_ALIVE_S = 0.4


@pytest.fixture
def api(backend: StubBackend) -> Iterator[ApiServer]:
    """The API on 127.0.0.1, with short deadlines so a test takes a second, not a minute."""
    server = ApiServer(
        backend,
        bind_loopback("127.0.0.1:0"),
        token=TOKEN,
        max_body=4096,
        read_timeout_s=READ_TIMEOUT_S,
        keep_alive_s=KEEP_ALIVE_S,
    )
    server.start()
    yield server
    server.stop()


def _port(api: ApiServer) -> int:
    return int(api.url.rsplit(":", 1)[1])


def _assert_error(resp: requests.Response, status: int, code: str, field: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json() == {
        "error": {"code": code, "message": resp.json()["error"]["message"], "field": field}
    }
    assert TOKEN not in resp.text


# -- Host and Origin ---------------------------------------------------------------------


def test_the_listen_address_and_localhost_are_accepted(
    api: ApiServer, http: requests.Session
) -> None:
    """The names of the socket, with its port, in any case: the API answers as usual."""
    port = _port(api)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}"):
        resp = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Host": host}, timeout=5)
        assert resp.status_code == 200, (host, resp.text)
        assert resp.json() == {"jobs": []}


def test_a_foreign_host_is_refused_before_auth_and_before_the_body(
    api: ApiServer, backend: StubBackend, http: requests.Session
) -> None:
    """DNS rebinding: a page at evil.example resolved to 127.0.0.1 sends its own name. 421 in
    the API's error shape, whatever the token, before the body (an oversized one is not 413);
    a right name with the wrong port, or no port, is as foreign."""
    port = _port(api)
    hosts = [
        "evil.example",
        f"evil.example:{port}",
        f"127.0.0.1:{port + 1}",
        "127.0.0.1",
        "localhost",
        f"[::1]:{port}",
        f"127.0.0.1.evil.example:{port}",
    ]
    for host in hosts:
        for headers in ({}, auth(), {"Authorization": "Bearer wrong"}):
            resp = http.get(f"{api.url}/v1/jobs", headers={**headers, "Host": host}, timeout=5)
            _assert_error(resp, 421, "misdirected", "Host")
    big = http.post(
        f"{api.url}/v1/jobs",
        data=b"x" * 10_000,
        headers={**auth(), "Host": "evil.example"},
        timeout=5,
    )
    _assert_error(big, 421, "misdirected", "Host")
    healthz = http.get(f"{api.url}/healthz", headers={"Host": "evil.example"}, timeout=5)
    _assert_error(healthz, 421, "misdirected", "Host")
    assert backend.calls == 0


def test_a_request_without_a_host_is_refused(api: ApiServer) -> None:
    """HTTP/1.0 may leave Host out; the API does not guess whom it was meant for."""
    with socket.create_connection(("127.0.0.1", _port(api)), timeout=5) as sock:
        sock.sendall(f"GET /v1/jobs HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 421"), answer
    assert b'"code":"misdirected"' in answer and b"missing" in answer


def test_any_origin_is_refused(
    api: ApiServer, backend: StubBackend, http: requests.Session
) -> None:
    """Browsers send Origin, briefd's clients never do: 403 even with the token and the
    right Host, for every origin including the daemon's own, and before the body."""
    port = _port(api)
    origins = ["https://evil.example", f"http://127.0.0.1:{port}", "null", ""]
    for origin in origins:
        for method in ("GET", "POST", "DELETE"):
            path = "/v1/jobs" if method != "DELETE" else "/v1/jobs/some-job"
            resp = http.request(
                method,
                f"{api.url}{path}",
                headers={**auth(), "Origin": origin},
                data=b"x" * 10_000 if method == "POST" else None,
                timeout=5,
            )
            _assert_error(resp, 403, "origin_refused", "Origin")
    assert backend.calls == 0


# -- slow and idle clients ---------------------------------------------------------------


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and its Content-Length body), however recv splits it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (readable and at EOF, or reset)."""
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BlockingIOError):
        return True


def test_slowloris_connections_are_closed_and_a_normal_client_still_works(
    api: ApiServer, http: requests.Session
) -> None:
    """50 connections: 25 send nothing, 25 send a request head a byte at a time and never
    finish it. Each is closed by the server after about the read timeout (not at once, not
    never), and a normal client is answered promptly meanwhile."""
    port = _port(api)
    head = (f"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: " + "a" * 4096).encode()
    opened = time.monotonic()
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(25)]
    dripping = {socket.create_connection(("127.0.0.1", port), timeout=5): 0 for _ in range(25)}
    closed_at: dict[socket.socket, float] = {}
    normal_s: list[float] = []
    deadline = opened + READ_TIMEOUT_S + 5.0
    try:
        while len(closed_at) < 50 and time.monotonic() < deadline:
            pending = [s for s in [*silent, *dripping] if s not in closed_at]
            readable, _, _ = select.select(pending, [], [], 0.05)  # also paces the drip
            for sock in readable:
                if _closed(sock):
                    closed_at[sock] = time.monotonic()
            for sock, sent in dripping.items():
                if sock in closed_at:
                    continue
                try:
                    sock.send(head[sent : sent + 1])
                    dripping[sock] = sent + 1
                except OSError:  # reset by the server
                    closed_at[sock] = time.monotonic()
            if not normal_s and time.monotonic() - opened > READ_TIMEOUT_S / 2:
                t0 = time.monotonic()
                resp = http.get(f"{api.url}/v1/jobs", headers=auth(), timeout=5)
                assert resp.status_code == 200
                normal_s.append(time.monotonic() - t0)
    finally:
        for sock in [*silent, *dripping]:
            sock.close()
    assert len(closed_at) == 50, f"{50 - len(closed_at)} slow connections still open"
    lifetimes = sorted(t - opened for t in closed_at.values())
    assert lifetimes[0] >= READ_TIMEOUT_S * 0.8, lifetimes  # the deadline, not a refusal
    assert lifetimes[-1] <= READ_TIMEOUT_S + 2.0, lifetimes
    assert all(dripping.values()), "every dripping client got bytes in before the close"
    assert normal_s and normal_s[0] < 1.0, normal_s


def test_an_idle_keep_alive_connection_is_closed(api: ApiServer) -> None:
    """After a response, a connection that sends nothing more is closed after keep_alive_s."""
    port = _port(api)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        sent = time.monotonic()  # the server's idle clock starts after this, never before
        sock.sendall(request)
        answer = _read_response(sock)
        answered = time.monotonic()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        sock.settimeout(KEEP_ALIVE_S + 3.0)
        assert _read_all(sock) == b""  # EOF: the server closed it (a timeout would raise)
        closed = time.monotonic()
    # Not before keep_alive_s of idleness (measured from the send, so a loaded machine's
    # late recv cannot make an honest server look early), and not long after it.
    assert closed - sent >= KEEP_ALIVE_S, closed - sent
    assert closed - answered <= KEEP_ALIVE_S + 2.0, closed - answered


def test_a_body_that_never_arrives_is_cut_off_but_a_slow_answer_is_not(
    api: ApiServer, backend: StubBackend
) -> None:
    """The deadline is on the client's sending: a POST whose body stops short is closed; a
    request served for longer than the deadline (a slow backend) is answered in full."""
    port = _port(api)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"job_id": ')
        sent = time.monotonic()
        sock.settimeout(READ_TIMEOUT_S + 3.0)
        _read_all(sock)  # whatever it says, it ends: EOF within the deadline
        assert time.monotonic() - sent <= READ_TIMEOUT_S + 2.0
    backend.delay_s = READ_TIMEOUT_S * 3
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = (
            f"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"jobs":[]}'), answer
