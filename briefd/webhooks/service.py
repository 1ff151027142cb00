"""Webhooks in the daemon: the checks at start and at submission, the outbox, the actor.

No secret, no webhooks: a delivery a receiver cannot verify is worth nothing,
and a secret briefd made up would have to be found and copied to every receiver
(and would differ between the daemons of a cluster). So a daemon with
``BRIEFD_WEBHOOK_URL`` but no ``BRIEFD_WEBHOOK_SECRET`` refuses to start, in
one line, and one with neither refuses a job that asks for a webhook (400,
``field: webhook``). Either way the secret is checked (``whsec_<base64>``, at
least 16 bytes) and registered with the log redaction before anything runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import pykka
from loguru import logger

from briefd.actors.webhooks import WebhookActor, WebhookStats
from briefd.config import ConfigError, Settings
from briefd.messages import WEBHOOK_EVENTS, JobSpec, Tick, WebhookDelivery
from briefd.ops.eventlog import event_classes
from briefd.redaction import register_secret
from briefd.webhooks.metrics import WebhookFigures
from briefd.webhooks.retry import RetryPolicy
from briefd.webhooks.send import Sender, parse_secret
from briefd.webhooks.urls import WebhookUrlError, check_url

ASK_S = 2.0


def register_url_secrets(url: str) -> None:
    """A URL's password and query (a token, often) never appear in a log line."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        for secret in (parts.password, parts.query):
            register_secret(secret)


def check_events(events: Sequence[str], where: str) -> None:
    """Each name one the webhooks send; ConfigError naming ``webhook.events``."""
    allowed = ", ".join(WEBHOOK_EVENTS)
    if not events:
        raise ConfigError(f"{where}: webhook.events: empty; name at least one of {allowed}")
    known = event_classes()
    for name in events:
        if name in WEBHOOK_EVENTS:
            continue
        what = "is not sent by webhooks" if name in known else "is not a briefd event type"
        raise ConfigError(
            f"{where}: webhook.events: {name!r} {what} (they send {allowed}; "
            "the event stream has every event)"
        )


class Webhooks:
    """The daemon's webhooks: built at start (ConfigError: exit 2), then :meth:`start`."""

    def __init__(
        self, settings: Settings, journal: Any, *, own: Sequence[tuple[str, int]], owner: str
    ) -> None:
        self._settings = settings
        self._own = tuple(own)
        self._owner = owner
        self.actor: pykka.ActorRef[Any] | None = None
        secret = settings.webhook_secret
        self.enabled = secret is not None
        default = settings.webhook_url.strip() if settings.webhook_url else None
        if secret is None:
            if default:
                raise ConfigError(
                    "BRIEFD_WEBHOOK_URL is set but BRIEFD_WEBHOOK_SECRET is not: deliveries "
                    "must be signed (set it to whsec_<base64 of 32 random bytes>)"
                )
            self.outbox: Any = None
            return
        parse_secret(secret)
        register_secret(secret.get_secret_value().strip())
        if default:
            register_url_secrets(default)
            try:
                check_url(
                    default,
                    allow_private=settings.webhook_allow_private,
                    own=self._own,
                    field="BRIEFD_WEBHOOK_URL",
                )
            except WebhookUrlError as err:
                raise ConfigError(str(err)) from None
        self.policy = RetryPolicy(
            initial_s=settings.webhook_retry_initial_s,
            max_s=settings.webhook_retry_max_s,
            retry_for_s=settings.webhook_retry_for_s,
        )
        self.sender = Sender(
            secret, self.policy, allow_private=settings.webhook_allow_private, own=self._own
        )
        if settings.database_url is None:
            from briefd.webhooks.outbox import SqliteOutbox

            self.outbox = SqliteOutbox(journal, default, self._wake)
        else:
            from briefd.webhooks.pg_outbox import PgOutbox

            self.outbox = PgOutbox(journal, default, self._wake)
        journal.outbox = self.outbox

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        """Deliveries a killed predecessor held are due now; the actor starts sending."""
        if not self.enabled:
            return
        if released := self.outbox.release(self._owner):
            logger.info("{} webhook deliveries of the previous run are due again", released)
        self.actor = WebhookActor.start(self.outbox, self.sender, owner=self._owner)

    def check(self) -> None:
        """The daemon's watch: a dead actor is started again (the rows are its state)."""
        if self.actor is not None and not self.actor.is_alive():
            logger.error("the webhook actor died; starting another")
            self.actor = WebhookActor.start(self.outbox, self.sender, owner=self._owner)

    def stop(self, timeout_s: float = 2.0) -> None:
        if self.actor is not None:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                self.actor.stop(block=True, timeout=timeout_s)

    def _wake(self) -> None:
        actor = self.actor
        if actor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                actor.tell(Tick())

    # -- the API ---------------------------------------------------------------------

    def check_job(self, job: JobSpec, where: str = "job") -> None:
        """A job's webhook, checked before it is stored; ConfigError naming the field."""
        hook = job.webhook
        if hook is None:
            return
        if not self.enabled:
            raise ConfigError(
                f"{where}: webhook: this daemon has no BRIEFD_WEBHOOK_SECRET to sign "
                "deliveries with; set it, or leave webhook out"
            )
        check_events(hook.events, where)
        try:
            check_url(hook.url, allow_private=self._settings.webhook_allow_private, own=self._own)
        except WebhookUrlError as err:
            raise ConfigError(f"{where}: {err}") from None
        register_url_secrets(hook.url)

    def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        if self.outbox is None:
            return []
        return cast(list[WebhookDelivery], self.outbox.deliveries(job_id))

    def figures(self) -> WebhookFigures | None:
        if self.outbox is None:
            return None
        stats = WebhookStats()
        if self.actor is not None:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                stats = self.actor.proxy().stats().get(timeout=ASK_S)
        return WebhookFigures(deliveries=self.outbox.counts(), attempts=stats.attempts)
