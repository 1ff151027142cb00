"""Reading a streamed body below urllib3 (briefd.llm.chunked): the same bytes however the
chunks come, the framing errors refused, and the connection still reused from the pool."""

from __future__ import annotations

import http.client
import io
import threading
from typing import Any

import pytest
from urllib3.response import HTTPResponse

from briefd.config import Settings, load_pipeline
from briefd.llm.call import ChatClient, build_request
from briefd.llm.chunked import BodyBroken, ChunkedBody, Urllib3Body, body_reader
from briefd.sim.server import SimServer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Reads(io.RawIOBase):
    """A socket's reads: each ``readinto`` hands back the next of ``reads``, as arrivals."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._reads:
            return 0
        data = self._reads.pop(0)
        buffer[: len(data)] = data
        return len(data)


class _Sock:
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Reads(self._reads))


class _Pool:
    def __init__(self) -> None:
        self.put: list[Any] = []

    def _put_conn(self, conn: Any) -> None:
        self.put.append(conn)


def response(reads: list[bytes], head: bytes = HEAD) -> tuple[HTTPResponse, _Pool]:
    """A urllib3 response over http.client's, as the pool makes it, reading ``reads``."""
    reads = [head + reads[0], *reads[1:]] if reads else [head]
    original = http.client.HTTPResponse(_Sock(reads))  # type: ignore[arg-type]
    original.begin()
    pool = _Pool()
    resp = HTTPResponse(
        body=original,
        headers=dict(original.getheaders()),
        status=original.status,
        preload_content=False,
        decode_content=False,
        original_response=original,
        pool=pool,  # type: ignore[arg-type]
        connection=object(),  # type: ignore[arg-type]
    )
    return resp, pool


def read_all(reads: list[bytes]) -> tuple[bytes, ChunkedBody, _Pool]:
    resp, pool = response(reads)
    body = body_reader(resp)
    assert isinstance(body, ChunkedBody)
    out = b""
    while not body.ended:
        data = body.read()
        if not data:
            break
        out += data
    body.release()
    return out, body, pool


WIRE = (
    b"5\r\nhello\r\n"
    b"7;ext=1\r\n, world\r\n"  # a chunk extension
    b"1\n!\r\n"  # a size line ended by LF alone (http.client takes it)
    b"10\r\n" + b"x" * 16 + b"\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)


def test_the_same_bytes_at_any_split_and_the_connection_goes_back() -> None:
    """Cut into two reads anywhere, or a byte a read: the body's bytes, its end seen, and the
    connection handed to the pool once (the http.client response closed as at a body's end)."""
    splits = [[WIRE[:i], WIRE[i:]] for i in range(1, len(WIRE))]
    splits.append([WIRE[i : i + 1] for i in range(len(WIRE))])
    splits.append([WIRE])
    for reads in splits:
        out, body, pool = read_all(reads)
        assert out == b"hello, world!" + b"x" * 16, reads
        assert body.ended and len(pool.put) == 1


def test_bytes_after_the_body_keep_the_connection_out_of_the_pool() -> None:
    """What follows the last chunk belongs to no answer: the connection is not reused."""
    out, body, pool = read_all([b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"])
    assert out == b"hi" and body.ended and pool.put == []


@pytest.mark.parametrize(
    "wire",
    [
        b"2\r\nhi\r\n",  # the connection ends before the last chunk
        b"2\r\nhiXX0\r\n\r\n",  # the data does not end in CRLF
        b"zz\r\nhi\r\n0\r\n\r\n",  # not a hex size
        b"-2\r\nhi\r\n0\r\n\r\n",  # a negative size
        b"1" * 5000,  # a size line that never ends
    ],
)
def test_broken_framing_is_refused(wire: bytes) -> None:
    """A body that is not HTTP/1.1 chunked, or ends early, is BodyBroken (the call maps it to
    a lost connection) and its connection never goes back to the pool."""
    resp, pool = response([wire])
    body = body_reader(resp)
    with pytest.raises(BodyBroken):
        while body.read():
            pass
    body.release()
    assert pool.put == []


def test_a_body_with_a_length_is_read_by_urllib3() -> None:
    """Not chunked (a Content-Length, or a close): urllib3's own reading, as before."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 2\r\n\r\n"
    resp, _ = response([b"hi"], head=head)
    body = body_reader(resp)
    assert isinstance(body, Urllib3Body)
    assert body.read() == b"hi" and body.read() == b"" and body.ended


def test_streamed_calls_reuse_one_kept_alive_connection(sim: SimServer) -> None:
    """Twenty streamed calls one after another go over one connection: the body read below
    urllib3 leaves the connection fit for its next request and back in the pool."""
    httpd = sim._httpd
    accepted = [0]
    lock = threading.Lock()
    original = httpd.process_request

    def counting(request: Any, client_address: Any) -> None:
        with lock:
            accepted[0] += 1
        original(request, client_address)

    httpd.process_request = counting  # type: ignore[method-assign]
    settings = Settings(base_url=sim.base_url, stream=True, timeout_ms=10_000)
    spec = load_pipeline(None).by_name["BRIEFING_MD"]
    body = build_request(spec, "Write BRIEFING_MD for Acme.", settings)
    client = ChatClient(settings, sim.base_url)
    for i in range(20):
        done = client.complete(body, job_id=f"r{i}", stage="BRIEFING_MD")
        assert done.finish_reason == "stop" and done.ttft_ms is not None and done.text
    with lock:
        assert accepted[0] == 1


def test_a_stream_over_tls_is_read_whole_and_its_connection_reused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Over https the socket read below urllib3 is the TLS socket: two streamed calls, each
    whole, over one kept-alive connection."""
    import json
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []

    def event(content: str | None, finish: str | None = None) -> bytes:
        delta = {} if content is None else {"content": content}
        obj = {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def serve() -> None:
        raw, _ = listener.accept()
        accepted.append(1)
        with server_ctx.wrap_socket(raw, server_side=True) as conn:
            for _ in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for piece in (event("Hel"), event("lo"), event(None, "stop"), b"data: [DONE]\n\n"):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.sendall(b"0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    base = f"https://127.0.0.1:{port}/v1"
    try:
        client = ChatClient(Settings(base_url=base, timeout_ms=10_000), base)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        for i in range(2):
            done = client.complete(body, job_id=f"t{i}", stage="S")
            assert done.text == "Hello" and done.finish_reason == "stop"
    finally:
        listener.close()
        thread.join(timeout=10)
    assert accepted == [1]
