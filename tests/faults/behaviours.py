"""What the fake upstream (:mod:`faults.upstream`) answers: requests, exchanges, behaviours.

A behaviour is any ``Callable[[Exchange], None]``: it gets the parsed request and
the raw socket, and writes whatever bytes it likes (or none). The factories here
cover the faults briefd must survive; :func:`respond` and :func:`completion` help
write new ones. Import them from :mod:`faults.upstream`, which re-exports them.
"""

from __future__ import annotations

import functools
import gzip
import json
import select
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from briefd.sim.content import completion_body, error_body

CHAT_PATH = "/v1/chat/completions"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\r\n"
FORGED_LINE = '{"v":1,"ts":0,"level":"ERROR","event":"Forged","job_id":"x","msg":"forged"}'
"""A log line an attacker would like briefd to print: it must never appear as a line of its own."""
TERMINAL_TEXT = f"look{ESCAPES}{FORGED_LINE}\r\nend"
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."

_POLL_S = 0.05


@dataclass(frozen=True)
class Request:
    """One request as received: its line, headers (lower-case names) and body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def job(self) -> str:
        return self.headers.get("x-briefd-job", "")

    @property
    def stage(self) -> str:
        return self.headers.get("x-briefd-stage", "")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when it is not one)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


@dataclass
class Exchange:
    """What a behaviour gets: the request, its socket, and a way to wait politely."""

    request: Request
    sock: socket.socket
    stop: threading.Event
    max_wait_s: float

    def send(self, data: bytes) -> bool:
        """Write ``data``; False when the client has gone (or the server is closing)."""
        if self.stop.is_set():
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def hold(self, seconds: float | None = None) -> bool:
        """Wait ``seconds`` (at most ``max_wait_s``); False when the client left or we close."""
        limit = self.max_wait_s if seconds is None else min(seconds, self.max_wait_s)
        deadline = time.monotonic() + limit
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            try:
                readable, _, _ = select.select([self.sock], [], [], min(_POLL_S, left))
                if isinstance(self.sock, ssl.SSLSocket):
                    continue  # no peeking under TLS: wait for close() or the time limit
                if readable and not self.sock.recv(1, socket.MSG_PEEK):
                    return False  # the client closed its end
            except (OSError, ValueError):
                return False
        return False


Behaviour = Callable[[Exchange], None]


# -- helpers for behaviours ---------------------------------------------------------


def head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    """A response head with ``Connection: close`` (and ``Content-Length`` when given)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    all_headers = {"Connection": "close", **headers}
    if length is not None:
        all_headers["Content-Length"] = str(length)
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests"}


def respond(
    ex: Exchange,
    status: int,
    body: bytes | str | dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    """A whole response: a dict is sent as JSON (``ensure_ascii``), bytes exactly as given."""
    if isinstance(body, dict):
        body = json.dumps(body)
    data = body.encode("utf-8") if isinstance(body, str) else body
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    ex.send(head(status, hdrs, len(data)) + data)


def completion(ex: Exchange, content: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid ``chat.completion`` for the request (schema-shaped for JSON stages).

    ``content`` replaces the message text; other keyword arguments replace top-level
    fields (``usage=...``, ``choices=...``).
    """
    body = ex.request.json()
    if not isinstance(body.get("messages"), list):
        body = {"messages": [{"role": "user", "content": ""}]}
    data = completion_body(ex.request.stage, body, None, len(ex.request.body))
    if content is not None:
        data["choices"][0]["message"]["content"] = content
    data.update(overrides)
    return data


def _json_document(ex: Exchange, poison: str) -> str:
    """The stage's normal JSON document with ``poison`` appended to every string in it."""
    content = completion(ex)["choices"][0]["message"]["content"]
    inner = content.removeprefix("```json\n").removesuffix("\n```")
    return "```json\n" + json.dumps(_append(json.loads(inner), poison)) + "\n```"


def _append(value: Any, suffix: str) -> Any:
    if isinstance(value, str):
        return value + suffix
    if isinstance(value, list):
        return [_append(v, suffix) for v in value]
    if isinstance(value, dict):
        return {k: _append(v, suffix) for k, v in value.items()}
    return value


# -- behaviours ---------------------------------------------------------------------


def ok() -> Behaviour:
    """A normal completion."""
    return lambda ex: respond(ex, 200, completion(ex))


def answer(content: str, **overrides: Any) -> Behaviour:
    """A completion whose message text is ``content`` (fields overridable, as in completion)."""
    return lambda ex: respond(ex, 200, completion(ex, content, **overrides))


def raw(status_code: int, body: bytes, headers: dict[str, str] | None = None) -> Behaviour:
    """Exactly these bytes as the body (Content-Length is theirs)."""
    return lambda ex: respond(ex, status_code, body, headers)


def status(code: int, message: str = "scripted failure", **headers: str) -> Behaviour:
    """An OpenAI-style error answer (``Retry-After`` and friends as keyword headers)."""
    hdrs = {k.replace("_", "-").title(): v for k, v in headers.items()}
    return lambda ex: respond(ex, code, error_body(code, message), hdrs)


def silent() -> Behaviour:
    """Accept the request and never answer (until the client leaves or the server closes)."""

    def behave(ex: Exchange) -> None:
        ex.hold()

    return behave


def drip(interval_s: float = 0.05) -> Behaviour:
    """Headers at once, then the body one byte per ``interval_s``: no read ever times out."""

    def behave(ex: Exchange) -> None:
        data = json.dumps(completion(ex)).encode()
        if not ex.send(head(200, {"Content-Type": "application/json"}, len(data))):
            return
        for i in range(len(data)):
            if not ex.send(data[i : i + 1]) or not ex.hold(interval_s):
                return

    return behave


def reset_mid_body() -> Behaviour:
    """Half the body, then a TCP reset (SO_LINGER 0)."""

    def behave(ex: Exchange) -> None:
        data = json.dumps(completion(ex)).encode()
        ex.send(head(200, {"Content-Type": "application/json"}, len(data)) + data[: len(data) // 2])
        ex.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return behave


def short_body() -> Behaviour:
    """A ``Content-Length`` 100 bytes longer than the body sent, then a clean close."""

    def behave(ex: Exchange) -> None:
        data = json.dumps(completion(ex)).encode()
        ex.send(head(200, {"Content-Type": "application/json"}, len(data) + 100) + data)

    return behave


def html_200() -> Behaviour:
    """A captive portal's (or a misconfigured proxy's) 200 HTML page."""
    page = b"<!doctype html><html><body><h1>Welcome</h1>Please log in.</body></html>"
    return raw(200, page, {"Content-Type": "text/html"})


def no_choices() -> Behaviour:
    """``choices: []``."""
    return lambda ex: respond(ex, 200, completion(ex, choices=[]))


def null_content() -> Behaviour:
    """``content: null`` (as a tool-calling answer has)."""

    def behave(ex: Exchange) -> None:
        data = completion(ex)
        data["choices"][0]["message"]["content"] = None
        respond(ex, 200, data)

    return behave


def endless_body() -> Behaviour:
    """A chunked body that never ends (until the client leaves or the server closes)."""

    def behave(ex: Exchange) -> None:
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        hdrs = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        if ex.send(head(200, hdrs, None) + b"1\r\n{\r\n"):
            while ex.send(chunk):
                pass

    return behave


def gzip_ok() -> Behaviour:
    """A normal completion, gzip-encoded."""

    def behave(ex: Exchange) -> None:
        data = gzip.compress(json.dumps(completion(ex)).encode())
        respond(ex, 200, data, {"Content-Encoding": "gzip"})

    return behave


def deflate_ok() -> Behaviour:
    """A normal completion, deflate-encoded (zlib-wrapped, as HTTP's ``deflate`` says)."""

    def behave(ex: Exchange) -> None:
        data = zlib.compress(json.dumps(completion(ex)).encode())
        respond(ex, 200, data, {"Content-Encoding": "deflate"})

    return behave


@functools.cache
def bomb(decoded_mib: int = 64) -> bytes:
    """A gzip of ``decoded_mib`` MiB of spaces: a few tens of KiB on the wire."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1024 * 1024)
    parts = [comp.compress(b'{"choices": "')] + [comp.compress(block) for _ in range(decoded_mib)]
    return b"".join([*parts, comp.compress(b'"}'), comp.flush()])


def gzip_bomb(decoded_mib: int = 64) -> Behaviour:
    """A small gzip body that inflates to ``decoded_mib`` MiB."""
    return raw(200, bomb(decoded_mib), {"Content-Encoding": "gzip"})


def unknown_encoding(name: str = "br") -> Behaviour:
    """A body in a content coding briefd never asked for."""
    return lambda ex: respond(ex, 200, b"\x0b\x02\x80{}\x03", {"Content-Encoding": name})


SURROGATE_TEXT = "lone high \ud800, lone low \udfff, reversed \ude00\ud83d, pair \U0001f600"
"""Markdown answer text: two lone surrogates, a reversed (so lone) pair, and a valid astral char."""
RAW_SURROGATE = b"\xed\xa0\x80"
"""A surrogate encoded as UTF-8 bytes (CESU-8): not UTF-8, but ``json.loads`` lets it through."""


def lone_surrogates() -> Behaviour:
    """Lone surrogates in the answer: as JSON escapes, and (markdown) as raw CESU-8 bytes.

    JSON stages get them inside the document's own strings (escaped twice: in the
    document's JSON, inside the completion's JSON), so they appear only once the
    document is parsed.
    """

    def behave(ex: Exchange) -> None:
        if ex.request.stage.endswith("_JSON"):
            respond(ex, 200, completion(ex, _json_document(ex, " \ud800 \U0001f600")))
            return
        text = f"```markdown\n# Title\n\n{SURROGATE_TEXT} raw @RAW@\n```"
        data = json.dumps(completion(ex, text)).encode().replace(b"@RAW@", RAW_SURROGATE)
        respond(ex, 200, data)

    return behave


def terminal_escapes() -> Behaviour:
    """Escape sequences and a CR LF + forged JSON log line in the answer text."""

    def behave(ex: Exchange) -> None:
        if ex.request.stage.endswith("_JSON"):
            respond(ex, 200, completion(ex, _json_document(ex, TERMINAL_TEXT)))
        else:
            respond(ex, 200, completion(ex, f"```markdown\n# Title\n\n{TERMINAL_TEXT}\n```"))

    return behave


def error_with_escapes(code: int = 400) -> Behaviour:
    """An error whose message carries escape sequences and a forged log line."""
    return status(code, f"bad request {TERMINAL_TEXT}")


def echo_authorization(code: int = 401) -> Behaviour:
    """An error body that quotes the Authorization header received, several ways.

    As a Python dict of headers (some proxies), as a header line, bare in prose,
    and as ``x-api-key`` with the key alone: whatever pattern briefd redacts by,
    the configured key must not survive.
    """

    def behave(ex: Exchange) -> None:
        auth = ex.request.authorization or ""
        key = auth.split(" ", 1)[-1]
        message = (
            f"invalid credentials; request headers: {{'Authorization': '{auth}', "
            f"'User-Agent': 'briefd'}}\r\nAuthorization: {auth}\r\nx-api-key: {key}\r\n"
            f"the key {key} is not valid"
        )
        body = {"error": {"message": message, "type": "invalid_request_error", "auth": auth}}
        respond(ex, code, body)

    return behave


def insufficient_quota() -> Behaviour:
    """OpenAI's 429 for an exhausted quota: waiting never helps."""
    body = {
        "error": {
            "message": QUOTA_MESSAGE,
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    return lambda ex: respond(ex, 429, body, {"Retry-After": "0.2"})


def malformed_usage(usage: Any) -> Behaviour:
    """A normal answer whose ``usage`` is ``usage`` (``{"prompt_tokens": "many"}``, ``[]``...)."""
    return lambda ex: respond(ex, 200, completion(ex, usage=usage))
