"""The front door opened on purpose: BRIEFD_ALLOWED_ORIGINS (CORS), BRIEFD_ALLOWED_HOSTS, /ui/.

The daemon's real :class:`~briefd.daemon.http_api.ApiServer` runs in-process over a stub
backend (as in ``test_api_guards``, whose tests keep the defaults shut), so CORS and the
Host check are exercised over real TCP; one test starts ``briefd serve`` to check that a
bad setting stops the start with one line.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from briefd.config import ConfigError, Settings
from briefd.daemon.http_api import ApiServer, bind_loopback
from briefd.daemon.http_origin import FrontSettings, parse_hosts, parse_origins
from briefd.daemon.http_ui import PAGE, csp_of
from faults.api_stub import TOKEN, StubBackend, auth

APP = "https://app.example.com"


@pytest.fixture
def serve(backend: StubBackend) -> Iterator[Callable[..., ApiServer]]:
    """``serve(**settings)``: an ApiServer with those front-door settings, stopped after."""
    servers: list[ApiServer] = []

    def start(**settings: Any) -> ApiServer:
        front = FrontSettings.of(Settings(**settings))
        server = ApiServer(
            backend, bind_loopback("127.0.0.1:0"), token=TOKEN, max_body=4096, front=front
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _refused(resp: requests.Response, status: int, code: str, field: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["field"] == field
    assert "access-control-allow-origin" not in resp.headers


def _preflight(http: requests.Session, url: str, origin: str) -> requests.Response:
    return http.options(
        f"{url}/v1/jobs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=5,
    )


# -- CORS --------------------------------------------------------------------------------


def test_a_listed_origin_gets_its_preflight_answered_without_a_token(
    serve: Callable[..., ApiServer], backend: StubBackend, http: requests.Session
) -> None:
    """The browser's OPTIONS carries no token: answered before the token is asked for,
    naming exactly that origin, Authorization among the allowed headers, no credentials."""
    api = serve(allowed_origins=f"{APP}, https://other.example.com:8443")
    resp = _preflight(http, api.url, APP)
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == APP
    allowed = {h.strip().lower() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in resp.headers
    second = _preflight(http, api.url, "https://other.example.com:8443")
    assert second.headers["access-control-allow-origin"] == "https://other.example.com:8443"
    assert backend.calls == 0


def test_a_listed_origin_gets_cors_headers_on_the_actual_request(
    serve: Callable[..., ApiServer], backend: StubBackend, http: requests.Session
) -> None:
    """With the token: 200 and ACAO for that origin (Vary: Origin); without: 401, still
    with ACAO so that the page can read why."""
    api = serve(allowed_origins=APP)
    resp = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Origin": APP}, timeout=5)
    assert resp.status_code == 200 and resp.json() == {"jobs": []}
    assert resp.headers["access-control-allow-origin"] == APP
    assert "origin" in resp.headers.get("vary", "").lower()
    assert backend.calls == 1
    no_token = http.get(f"{api.url}/v1/jobs", headers={"Origin": APP}, timeout=5)
    assert no_token.status_code == 401
    assert no_token.headers["access-control-allow-origin"] == APP
    assert backend.calls == 1


def test_other_origins_are_still_refused_preflight_included(
    serve: Callable[..., ApiServer], backend: StubBackend, http: requests.Session
) -> None:
    """Near misses of the listed origin (scheme, port, subdomain, suffix, null) get 403
    for the request and for the preflight, with the token or without."""
    api = serve(allowed_origins=APP)
    port = api.url.rsplit(":", 1)[1]
    for origin in (
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://evil.app.example.com",
        "https://app.example.com.evil.example",
        "null",
        "",
        f"http://127.0.0.1:{port}",  # the daemon's own: only with BRIEFD_UI
    ):
        resp = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Origin": origin}, timeout=5)
        _refused(resp, 403, "origin_refused", "Origin")
        assert "BRIEFD_ALLOWED_ORIGINS" in resp.json()["error"]["message"]
        _refused(_preflight(http, api.url, origin), 403, "origin_refused", "Origin")
    assert backend.calls == 0


def test_requests_without_an_origin_work_as_before_when_origins_are_listed(
    serve: Callable[..., ApiServer], http: requests.Session
) -> None:
    """curl and briefd's client send no Origin: no CORS headers, the same answers."""
    api = serve(allowed_origins=APP)
    resp = http.get(f"{api.url}/v1/jobs", headers=auth(), timeout=5)
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
    assert http.get(f"{api.url}/v1/jobs", timeout=5).status_code == 401


# -- Host --------------------------------------------------------------------------------


def test_allowed_hosts_are_added_to_the_socket_names_and_nothing_else(
    serve: Callable[..., ApiServer], backend: StubBackend, http: requests.Session
) -> None:
    """A reverse proxy's name is accepted bare or with 80/443; name:port only as given;
    anything else is still 421, and the socket's own names still work."""
    api = serve(allowed_hosts="briefd.example.com, Proxy.Example.com:8443")
    port = api.url.rsplit(":", 1)[1]
    for host in (
        "briefd.example.com",
        "BRIEFD.example.com:443",
        "briefd.example.com:80",
        "proxy.example.com:8443",
        f"127.0.0.1:{port}",
        f"localhost:{port}",
    ):
        resp = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Host": host}, timeout=5)
        assert resp.status_code == 200, (host, resp.text)
    calls = backend.calls
    for host in (
        "briefd.example.com:8080",
        "proxy.example.com",
        "evil.example",
        "briefd.example.com.evil.example",
        f"evil.example:{port}",
    ):
        resp = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Host": host}, timeout=5)
        _refused(resp, 421, "misdirected", "Host")
        assert "BRIEFD_ALLOWED_HOSTS" in resp.json()["error"]["message"]
    assert backend.calls == calls


# -- the settings ------------------------------------------------------------------------


def test_origins_are_parsed_exactly_and_normalised() -> None:
    """Lower case, default ports dropped (browsers send them so), duplicates merged."""
    assert parse_origins("") == ()
    assert parse_origins(" https://App.Example.com:443 ,http://a.example:80,http://a.example") == (
        "https://app.example.com",
        "http://a.example",
    )
    assert parse_origins("http://127.0.0.1:3000,http://[::1]:8080") == (
        "http://127.0.0.1:3000",
        "http://[::1]:8080",
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("*", "wildcard"),
        ("https://*.example.com", "wildcard"),
        ("https://app.example.com/", "path"),
        ("https://app.example.com/ui", "path"),
        ("app.example.com", "is not one"),
        ("ftp://app.example.com", "is not one"),
        ("https://app.example.com:99999", "is not one"),
        ("https://user@app.example.com", "is not one"),
    ],
)
def test_a_bad_origin_is_one_line_naming_the_variable(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_origins(f"https://ok.example.com,{value}")
    text = str(err.value)
    assert text.startswith("BRIEFD_ALLOWED_ORIGINS: ") and why in text and "\n" not in text
    assert "scheme://host[:port]" in text


@pytest.mark.parametrize("value", ["*", "https://briefd.example.com", "a.example/x", "a b"])
def test_a_bad_host_is_one_line_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hosts(value)
    assert str(err.value).startswith("BRIEFD_ALLOWED_HOSTS: ")


def test_serve_with_a_bad_origin_exits_2_with_one_line(
    tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """``briefd serve`` refuses to start, before it binds or writes anything."""
    env = child_env(
        BRIEFD_DATA_DIR=str(tmp_path / "data"),
        BRIEFD_ALLOWED_ORIGINS="https://app.example.com/",
        BRIEFD_BASE_URL="http://127.0.0.1:9/v1",
    )
    proc = subprocess.run(
        briefd_cmd("serve"), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "BRIEFD_ALLOWED_ORIGINS" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- the page ----------------------------------------------------------------------------


def test_the_page_is_served_at_ui_without_a_token_only_when_asked(
    serve: Callable[..., ApiServer], http: requests.Session
) -> None:
    """BRIEFD_UI=true: /ui/ is the example file, no token needed, under a CSP pinning its
    own script; /ui redirects. Off (the default): /ui/ is an API path like any other."""
    off = serve()
    assert http.get(f"{off.url}/ui/", timeout=5).status_code == 401
    api = serve(ui=True)
    page = http.get(f"{api.url}/ui/", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == PAGE.read_text(encoding="utf-8")
    assert TOKEN not in page.text
    csp = page.headers["content-security-policy"]
    assert csp == csp_of(page.text) and "'sha256-" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    redirect = http.get(f"{api.url}/ui", timeout=5, allow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/ui/"
    assert http.get(f"{api.url}/ui/other.js", timeout=5).status_code == 404
    assert http.post(f"{api.url}/ui/", timeout=5).status_code == 405
    foreign = http.get(f"{api.url}/ui/", headers={"Host": "evil.example"}, timeout=5)
    _refused(foreign, 421, "misdirected", "Host")


def test_with_the_page_on_the_daemons_own_origin_may_call_the_api(
    serve: Callable[..., ApiServer], backend: StubBackend, http: requests.Session
) -> None:
    """The page sends Origin on its POSTs: the daemon's own origins are allowed with
    BRIEFD_UI, other origins are not."""
    api = serve(ui=True)
    port = api.url.rsplit(":", 1)[1]
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        resp = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Origin": origin}, timeout=5)
        assert resp.status_code == 200, (origin, resp.text)
    evil = http.get(f"{api.url}/v1/jobs", headers={**auth(), "Origin": APP}, timeout=5)
    _refused(evil, 403, "origin_refused", "Origin")


def test_the_page_embeds_the_example_job(repo: Path) -> None:
    """The textarea's JSON is examples/northwind-briefing.json (they cannot drift apart)."""
    import html
    import json
    import re

    text = PAGE.read_text(encoding="utf-8")
    found = re.search(r'<textarea id="job"[^>]*>(.*?)</textarea>', text, re.S)
    assert found is not None
    example = (repo / "examples" / "northwind-briefing.json").read_text(encoding="utf-8")
    assert json.loads(html.unescape(found.group(1))) == json.loads(example)
    assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text
