"""One attempt of one delivery: resolve and check the receiver, sign, POST, read the status.

Signing is the ``standardwebhooks`` package's (the convention's reference
implementation, pure Python): ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">``, keyed with the secret's base64
bytes. The timestamp is the attempt's own (receivers refuse ones older than a
few minutes); the id and the body are the delivery's, the same every time.

The connection goes to the address :func:`~briefd.webhooks.urls.check_url`
just resolved and approved (``Host`` and TLS name stay the URL's), so a name
re-pointed between the check and the connect cannot reach a private address.
Redirects are not followed (a 3xx is a failed attempt: a redirect could lead
anywhere). Each attempt is bounded (``timeout_s`` to connect and again to read)
and runs on the sender's pooled threads, never on the actor's.
"""

from __future__ import annotations

import base64
import binascii
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import urllib3
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

import briefd
from briefd.config import ConfigError
from briefd.llm.text import one_line
from briefd.messages import WebhookAttempted
from briefd.webhooks.outbox import Due
from briefd.webhooks.retry import RetryPolicy, retry_after
from briefd.webhooks.urls import Resolver, WebhookUrlError, check_url, resolve

TIMEOUT_S = 10.0
"""Connect, and then read the answer, each within this (the convention suggests seconds)."""
MIN_SECRET_BYTES = 16
ERROR_CHARS = 200


def parse_secret(secret: SecretStr) -> Webhook:
    """The signer for ``BRIEFD_WEBHOOK_SECRET``; ConfigError (one line, the value never shown)."""
    value = secret.get_secret_value().strip()
    if not value.startswith("whsec_"):
        raise ConfigError("BRIEFD_WEBHOOK_SECRET: must be whsec_ followed by base64")
    try:
        key = base64.b64decode(value[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("BRIEFD_WEBHOOK_SECRET: the part after whsec_ is not base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"BRIEFD_WEBHOOK_SECRET: {len(key)} bytes is too short (at least "
            f'{MIN_SECRET_BYTES}; make one with: python -c "import base64, os; '
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
        )
    return Webhook(key)


class Sender:
    """Makes attempts (thread-safe: each attempt has its own connection)."""

    def __init__(
        self,
        secret: SecretStr,
        policy: RetryPolicy,
        *,
        allow_private: bool,
        own: Sequence[tuple[str, int]] = (),
        timeout_s: float = TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self._signer = parse_secret(secret)
        self.policy = policy
        self._allow_private = allow_private
        self._own = tuple(own)
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._ssl = ssl_context
        self._resolver = resolver

    def headers(self, due: Due, now: float) -> dict[str, str]:
        """The Standard Webhooks headers of an attempt made at ``now`` (Unix seconds)."""
        stamp = datetime.fromtimestamp(int(now), UTC)
        return {
            "content-type": "application/json",
            "user-agent": f"briefd/{briefd.__version__} (webhooks)",
            "webhook-id": due.id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": self._signer.sign(due.id, stamp, due.payload),
        }

    def attempt(self, due: Due) -> WebhookAttempted:
        """Make one attempt of ``due`` and say what it means (never raises)."""
        started = time.monotonic()
        status, why, wait = self._post(due)
        outcome, retry_in = self.policy.decide(status, due.attempts + 1, due.age_s, wait)
        return WebhookAttempted(
            job_id=due.job_id,
            delivery_id=due.id,
            event_type=due.event,
            attempt=due.attempts + 1,
            outcome=outcome,
            status=status,
            error=why,
            retry_in_s=None if retry_in is None else round(retry_in, 3),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    def _post(self, due: Due) -> tuple[int | None, str, float | None]:
        """``(status or None, why it failed or '', Retry-After seconds or None)``."""
        try:
            target = check_url(
                due.url, allow_private=self._allow_private, own=self._own, resolver=self._resolver
            )
        except WebhookUrlError as err:
            return None, one_line(f"refused at the attempt: {err}", ERROR_CHARS), None
        headers = self.headers(due, time.time())
        headers["host"] = target.host_header
        if target.userinfo is not None:
            headers.update(urllib3.make_headers(basic_auth=":".join(target.userinfo)))
        pool: urllib3.HTTPConnectionPool
        if target.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                target.address,
                target.port,
                timeout=self._timeout,
                retries=False,
                server_hostname=target.host,
                assert_hostname=target.host,
                ssl_context=self._ssl or ssl.create_default_context(),
            )
        else:
            pool = urllib3.HTTPConnectionPool(
                target.address, target.port, timeout=self._timeout, retries=False
            )
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=due.payload.encode(),
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
            try:
                status = response.status
                text = "" if 200 <= status < 300 else response.read(512).decode("utf-8", "replace")
            finally:
                response.release_conn()
        except Exception as err:  # any failure is one failed attempt, never the actor's
            return None, _scrub(f"{type(err).__name__}: {err}", due.url), None
        finally:
            pool.close()
        if 200 <= status < 300:
            return status, "", None
        why = _scrub(f"HTTP {status}{': ' + text.strip() if text.strip() else ''}", due.url)
        return status, why, retry_after(response.headers.get("retry-after"))


def _scrub(text: str, url: str) -> str:
    """``text`` as one redacted line without the URL's password or query (its secrets)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        secrets = [s for s in (parts.password, parts.username, parts.query) if s]
    except ValueError:
        secrets = []
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return one_line(text, ERROR_CHARS)
