"""Webhooks: a job's events pushed to a URL, signed, retried, at least once.

The Standard Webhooks convention (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>``). A delivery is a row of the
journal's outbox, written in the same transaction as the event it reports
(:mod:`briefd.webhooks.outbox`, :mod:`briefd.webhooks.pg_outbox`), so a daemon
killed at any moment neither loses one nor makes one up; the
:class:`~briefd.actors.webhooks.WebhookActor` sends what is due
(:mod:`briefd.webhooks.send`) and records each attempt (:mod:`briefd.webhooks.retry`).
Where a delivery may go is checked at submission and again before each attempt
(:mod:`briefd.webhooks.urls`). :mod:`briefd.webhooks.service` wires it into the daemon.
"""
