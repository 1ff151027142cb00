"""What every chat client of one endpoint shares, and the lean send through its pool.

A client is made per stage actor, so whatever a client builds is built once per
call: a ``requests.Session`` with its headers, the environment's proxies and CA
bundle, the adapter's pool. :func:`endpoint_for` builds them once per endpoint,
API key and environment, and every client of that endpoint reads them (never
writes: they are shared between threads).

:meth:`Endpoint.send` posts straight to the urllib3 pool of the process's
adapter (:func:`~briefd.llm.abort.shared_adapter`, whose connections a
:class:`~briefd.llm.abort.CallAbort` can cut). ``HTTPAdapter.send`` looked the
pool up, checked the certificate settings and wrapped the answer in a
``requests.Response`` on every call: a quarter of the client's CPU per call in
the profile (100 jobs, K=16), all of it the same for every call. Through a
proxy the call still goes by the adapter (its proxy manager), as before.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.response import BaseHTTPResponse

from briefd.llm.abort import AbortableAdapter, shared_adapter
from briefd.llm.encoding import ACCEPT_ENCODING

_ENV_VARS = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)  # fmt: skip
"""What requests reads from the environment for a call (besides ~/.netrc, unused here)."""


def env_key() -> tuple[str | None, ...]:
    """The variables that decide proxies and the CA bundle, as they are now (a cache key)."""
    return tuple(os.environ.get(name) for name in _ENV_VARS)


@functools.lru_cache(maxsize=64)
def environment(url: str, key: tuple[str | None, ...]) -> tuple[dict[str, str], bool | str]:
    """Proxies and ``verify`` for ``url`` as requests would read them from the environment.

    Cached by the variables' values (``key``), so a changed variable is seen by the
    next client and an unchanged environment is read once, not on every call.
    """
    del key  # only the cache's: requests reads the environment itself
    env = requests.Session().merge_environment_settings(url, {}, None, None, None)
    verify = env["verify"]
    return dict(env["proxies"]), True if verify is None else verify


@dataclass
class Endpoint:
    """One endpoint's configuration, shared read-only by its clients, and its pool.

    ``session`` holds the configuration as requests would (headers, proxies,
    ``verify``, ``trust_env`` off) for whoever inspects it; it never sends.
    """

    url: str
    adapter: AbortableAdapter
    session: requests.Session
    headers: dict[str, str]
    verify: bool | str
    proxies: dict[str, str]
    _path: str = ""
    _pool: HTTPConnectionPool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def send(
        self, data: bytes, job_id: str, stage: str, timeout: tuple[float, float]
    ) -> BaseHTTPResponse:
        """POST ``data`` (JSON) and return the answer unread (its body streams).

        Raises urllib3's exceptions (requests' through a proxy); the caller maps both.
        """
        headers = {
            **self.headers,
            "Content-Length": str(len(data)),
            "X-Briefd-Job": job_id,
            "X-Briefd-Stage": stage,
        }
        if self.proxies:
            return self._send_by_adapter(data, headers, timeout)
        return self._pool_now().urlopen(
            "POST",
            self._path,
            body=data,
            headers=headers,
            retries=False,  # tenacity retries, per the policy; urllib3 raises what happened
            redirect=False,  # a chat endpoint that redirects is misconfigured: a bad answer
            assert_same_host=False,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            preload_content=False,
            decode_content=False,  # the body is decoded with a cap (briefd.llm.encoding)
            chunked=False,
        )

    def _pool_now(self) -> HTTPConnectionPool:
        """The adapter's pool for this endpoint, looked up again once it has been closed
        (an adapter evicted from the process's pools, a pool its manager dropped)."""
        pool = self._pool
        if pool is not None and pool.pool is not None:
            return pool
        with self._lock:
            prep = requests.PreparedRequest()
            prep.prepare(method="POST", url=self.url)
            # The adapter's pool classes (briefd.llm.abort) are HTTPConnectionPools.
            found = cast(
                HTTPConnectionPool, self.adapter.get_connection_with_tls_context(prep, self.verify)
            )
            verify_tls: Any = self.adapter.cert_verify  # untyped in requests' stubs
            verify_tls(found, self.url, self.verify, None)
            self._pool = found
        return found

    def _send_by_adapter(
        self, data: bytes, headers: dict[str, str], timeout: tuple[float, float]
    ) -> BaseHTTPResponse:
        prep = requests.PreparedRequest()
        prep.method = "POST"
        prep.url = self.url
        prep.headers = requests.structures.CaseInsensitiveDict(headers)
        prep.body = data
        resp = self.adapter.send(
            prep, stream=True, timeout=timeout, verify=self.verify, proxies=self.proxies
        )
        raw: BaseHTTPResponse = resp.raw
        return raw


def endpoint_for(
    url: str,
    size: int,
    api_key: str | None,
    auth_header: str = "Authorization",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Endpoint:
    """The shared :class:`Endpoint` of ``url`` with this key, as the environment is now.

    The key goes in ``auth_header``: ``Authorization: Bearer`` (OpenAI and most), or
    Azure OpenAI's ``api-key``. ``extra_headers`` are an endpoint's own (OpenRouter's
    ``HTTP-Referer``, ``OpenAI-Project``).
    """
    adapter = shared_adapter(url, size)
    found = _endpoint(url, size, api_key, env_key(), auth_header, extra_headers)
    if found.adapter is not adapter:  # the process's pools moved on (an eviction)
        _endpoint.cache_clear()
        found = _endpoint(url, size, api_key, env_key(), auth_header, extra_headers)
    return found


@functools.lru_cache(maxsize=64)
def _endpoint(
    url: str,
    size: int,
    api_key: str | None,
    env: tuple[str | None, ...],
    auth_header: str = "Authorization",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Endpoint:
    session = requests.Session()
    adapter = shared_adapter(url, size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "briefd"
    session.headers["Accept-Encoding"] = ACCEPT_ENCODING
    for name, value in extra_headers:
        session.headers[name] = value
    if api_key:
        bearer = auth_header.lower() == "authorization"
        session.headers[auth_header] = f"Bearer {api_key}" if bearer else api_key
    # The environment (proxies, NO_PROXY, REQUESTS_CA_BUNDLE) is not re-read on every
    # call, as requests does with trust_env on (profiled at 11-45 % of the client's CPU
    # per call). ~/.netrc is not consulted: the Authorization header is set above.
    proxies, verify = environment(url, env)
    session.trust_env = False
    session.proxies.update(proxies)
    session.verify = verify
    headers = {k: v for k, v in session.headers.items() if isinstance(v, str)}
    headers["Content-Type"] = "application/json"
    return Endpoint(url, adapter, session, headers, verify, dict(session.proxies))
