"""The API's front door: which ``Host`` and ``Origin`` a request may carry, CORS, the page.

By default the daemon talks only to programs on its own machine: a ``Host``
that does not name the listening socket is 421 (DNS rebinding: a page whose
name was made to resolve to 127.0.0.1 still sends its own name), and a request
with an ``Origin`` header (browsers send it, briefd's client, curl and
Prometheus never do) is 403. Two settings open it, each for names listed
exactly, nothing by pattern:

* ``BRIEFD_ALLOWED_HOSTS``: host names a reverse proxy forwards
  (``briefd.example.com`` or ``briefd.example.com:8443``). A name without a
  port is accepted with no port and with 80 or 443, the ports a proxy's client
  leaves out or names.
* ``BRIEFD_ALLOWED_ORIGINS``: origins (``https://app.example.com``) whose pages
  may call the API. Their requests get CORS headers (Starlette's
  ``CORSMiddleware``), their preflights (``OPTIONS``, which carry no token) are
  answered here, before the token is asked for, and ``Authorization`` is an
  allowed request header. Credentials (cookies) are not: the API's credential
  is the bearer token, which the page sends itself. Any other origin is still
  403.

With ``BRIEFD_UI=true`` the daemon also serves the example page
(:mod:`briefd.daemon.http_ui`) at ``/ui/``, and its own origins
(``http://127.0.0.1:PORT``, ``http://localhost:PORT``) are allowed, so that the
page, which sends ``Origin`` on its own ``POST`` requests, can use the API.

This middleware runs first, before the token and before a byte of the body is
read (``_Guard`` in :mod:`briefd.daemon.http_api` does those).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from briefd.config import ConfigError, Settings

CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID")
CORS_EXPOSED = ("Retry-After",)
CORS_MAX_AGE_S = 600
_ORIGIN = re.compile(
    r"^(https?)://"
    r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])"
    r"(?::([0-9]{1,5}))?$"
)
_HOST = re.compile(
    r"^([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])"
    r"(?::([0-9]{1,5}))?$"
)


def _entries(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_origins(text: str) -> tuple[str, ...]:
    """``BRIEFD_ALLOWED_ORIGINS`` as exact origins (lower case, default port dropped).

    Raises :class:`ConfigError` naming the variable and the entry at fault: an
    origin is ``scheme://host[:port]``, http or https, with no path, no ``*``.
    """
    origins: list[str] = []
    for entry in _entries(text):
        m = _ORIGIN.match(entry.lower())
        if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) <= 65535):
            why = (
                "a wildcard is not allowed; list each origin"
                if "*" in entry
                else ("has a path" if re.match(r"^https?://[^/]+/", entry, re.I) else "is not one")
            )
            raise ConfigError(
                f"BRIEFD_ALLOWED_ORIGINS: {entry[:100]!r}: {why} "
                "(an origin is scheme://host[:port], http or https, no path, no '*'; "
                "comma-separated)"
            )
        scheme, host, port = m.groups()
        if port is not None and int(port) == {"http": 80, "https": 443}[scheme]:
            port = None  # browsers send the origin without its scheme's default port
        origins.append(f"{scheme}://{host}" + (f":{int(port)}" if port else ""))
    return tuple(dict.fromkeys(origins))


def parse_hosts(text: str) -> frozenset[str]:
    """``BRIEFD_ALLOWED_HOSTS`` as the ``Host`` header values it admits (lower case).

    ``name`` admits ``name``, ``name:80`` and ``name:443``; ``name:port`` that
    one. Raises :class:`ConfigError` naming the variable and the entry at fault.
    """
    hosts: set[str] = set()
    for entry in _entries(text):
        m = _HOST.match(entry.lower())
        if m is None or (m.group(2) is not None and not 0 < int(m.group(2)) <= 65535):
            raise ConfigError(
                f"BRIEFD_ALLOWED_HOSTS: {entry[:100]!r} is not a host name "
                "(name or name:port, no scheme, no path, no '*'; comma-separated)"
            )
        name, port = m.groups()
        if port is None:
            hosts.update({name, f"{name}:80", f"{name}:443"})
        else:
            hosts.add(f"{name}:{int(port)}")
    return frozenset(hosts)


def own_origins(hosts: Iterable[str]) -> tuple[str, ...]:
    """The origins of pages the daemon itself serves: ``http://`` + each bound ``Host``."""
    return tuple(sorted(f"http://{h}" for h in hosts))


@dataclass(frozen=True)
class FrontSettings:
    """What opens the front door, parsed and checked (the defaults keep it shut)."""

    hosts: frozenset[str] = frozenset()
    origins: tuple[str, ...] = ()
    ui: bool = False

    @classmethod
    def of(cls, settings: Settings) -> FrontSettings:
        """From ``BRIEFD_ALLOWED_HOSTS``, ``BRIEFD_ALLOWED_ORIGINS`` and ``BRIEFD_UI``;
        :class:`ConfigError` (one line naming the variable) on a bad entry."""
        return cls(
            hosts=parse_hosts(settings.allowed_hosts),
            origins=parse_origins(settings.allowed_origins),
            ui=settings.ui,
        )

    def origins_for(self, own_hosts: Iterable[str]) -> tuple[str, ...]:
        """The allowed origins, plus the daemon's own when it serves the page."""
        return self.origins + (own_origins(own_hosts) if self.ui else ())


class FrontDoor:
    """ASGI middleware: ``Host``, then ``Origin`` (and CORS for listed origins), then ``app``.

    ``hosts``: every ``Host`` value accepted (the socket's names and the allowed
    hosts); ``origins``: the origins allowed (empty: any ``Origin`` is refused);
    ``pages``: an ASGI app served *before* the token (the example page), or None.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: Collection[str],
        origins: Collection[str] = (),
        pages: ASGIApp | None = None,
    ) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        self.origins = frozenset(origins)
        self.pages = pages
        self.cors: ASGIApp = (
            CORSMiddleware(
                app,
                allow_origins=sorted(self.origins),
                allow_methods=CORS_METHODS,
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSED,
                allow_credentials=False,
                max_age=CORS_MAX_AGE_S,
            )
            if self.origins
            else app
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets (uvicorn runs with ws="none")
            return
        headers = Headers(scope=scope)
        refusal = self._refuse(headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if self.pages is not None and (scope["path"] == "/ui" or scope["path"].startswith("/ui/")):
            await self.pages(scope, receive, send)
            return
        await (self.cors if "origin" in headers else self.app)(scope, receive, send)

    def _refuse(self, headers: Headers) -> JSONResponse | None:
        from briefd.daemon.http_api import error  # the API's one error shape

        hosts = headers.getlist("host")
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.hosts:
            given = "missing" if not hosts else repr(", ".join(hosts)[:100])
            names = " or ".join(sorted(self.hosts))
            msg = f"Host: {given} is not this daemon's address ({names}; BRIEFD_ALLOWED_HOSTS)"
            return error(421, "misdirected", msg, field="Host")
        origins = headers.getlist("origin")
        if origins and (len(origins) != 1 or origins[0] not in self.origins):
            given = repr(", ".join(origins)[:100])
            if self.origins:
                msg = f"Origin: {given} is not in BRIEFD_ALLOWED_ORIGINS"
            else:
                msg = (
                    "Origin: requests from web pages are refused (list the page's origin in "
                    "BRIEFD_ALLOWED_ORIGINS); use briefd's client or curl"
                )
            return error(403, "origin_refused", msg, field="Origin")
        return None
