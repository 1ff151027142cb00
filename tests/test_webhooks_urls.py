"""Where a webhook may go, when it is tried again, and how a delivery is signed.

Pure functions, no network: host names resolve through a resolver the test gives.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Sequence

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook

from briefd.config import ConfigError
from briefd.webhooks.outbox import Due, body_of
from briefd.webhooks.retry import RetryPolicy, retry_after
from briefd.webhooks.send import Sender, parse_secret
from briefd.webhooks.urls import WebhookUrlError, check_url, redact_url


def resolver(table: dict[str, Sequence[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return resolve


PUBLIC = resolver({"hooks.example.com": ["93.184.216.34"], "rebind.example.com": ["10.0.0.7"]})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example.com/x", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.1:9000/x", "loopback"),
        ("http://localhost.:9000/x", "does not resolve"),
        ("http://10.1.2.3/x", "private"),
        ("http://192.168.1.1/x", "private"),
        ("http://[::1]:80/x", "loopback"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://100.64.0.1/x", "not a public address"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
        ("http://rebind.example.com/x", "resolves to 10.0.0.7"),
        ("http://nowhere.example.com/x", "does not resolve"),
    ],
)
def test_refused_urls_name_the_field_and_why(url: str, why: str) -> None:
    """Each refusal is one line starting with the field, saying what is wrong."""
    with pytest.raises(WebhookUrlError) as err:
        check_url(url, allow_private=False, resolver=PUBLIC)
    assert str(err.value).startswith("webhook.url: "), err.value
    assert why in str(err.value)
    assert "\n" not in str(err.value)


def test_private_addresses_are_allowed_with_the_flag_but_metadata_and_self_never() -> None:
    """BRIEFD_WEBHOOK_ALLOW_PRIVATE opens loopback and private networks, not the metadata
    service nor the daemon's own API."""
    target = check_url("http://127.0.0.1:9000/in?x=1", allow_private=True, resolver=PUBLIC)
    assert (target.address, target.port, target.path) == ("127.0.0.1", 9000, "/in?x=1")
    assert target.host_header == "127.0.0.1:9000"
    assert check_url("http://10.0.0.2/", allow_private=True).address == "10.0.0.2"
    with pytest.raises(WebhookUrlError, match="metadata"):
        check_url("http://169.254.169.254/", allow_private=True)
    own = [("127.0.0.1", 8765)]
    for url in ("http://127.0.0.1:8765/v1/jobs", "http://[::1]:8765/", "http://127.0.0.2:8765/"):
        with pytest.raises(WebhookUrlError, match="own API"):
            check_url(url, allow_private=True, own=own)
    assert check_url("http://127.0.0.1:8766/", allow_private=True, own=own).port == 8766


def test_a_public_name_is_pinned_to_the_address_checked() -> None:
    """The attempt connects to the address approved, sending the URL's Host (and TLS name)."""
    target = check_url("https://user:pw@hooks.example.com/in", allow_private=False, resolver=PUBLIC)
    assert target.address == "93.184.216.34"
    assert target.host_header == "hooks.example.com"
    assert target.userinfo == ("user", "pw")


def test_shown_urls_hide_credentials_and_query_values() -> None:
    shown = redact_url("https://bob:hunter22@hooks.example.com:8443/in?token=s3cr3t&a=b#frag")
    assert shown == "https://hooks.example.com:8443/in?token=***&a=***"


def test_retries_back_off_exponentially_with_jitter_until_the_time_bound() -> None:
    """2xx delivered; 410 given up; otherwise a delay that doubles (upper half of each step,
    capped), at least what Retry-After asks, until retry_for_s, the last attempt on it."""
    policy = RetryPolicy(initial_s=5, max_s=3600, retry_for_s=86_400)
    rng = random.Random(7)
    for attempt, step in [(1, 5), (2, 10), (3, 20), (8, 640), (20, 3600)]:
        for _ in range(50):
            assert step / 2 <= policy.delay(attempt, rng=rng) <= step
    assert policy.delay(1, retry_after_s=120) == 120
    assert policy.delay(1, retry_after_s=10**6) == 3600
    assert policy.decide(204, 3, 100) == ("delivered", None)
    assert policy.decide(410, 1, 0) == ("gave_up", None)
    outcome, wait = policy.decide(503, 1, 0)
    assert outcome == "retry" and wait is not None and 2.5 <= wait <= 5
    assert policy.decide(None, 30, 86_399.0) == ("retry", pytest.approx(1.0))
    assert policy.decide(None, 31, 86_400.0) == ("expired", None)
    # A whole schedule: attempts go on for 24 h, then stop.
    age, attempt = 0.0, 1
    while (decided := policy.decide(500, attempt, age))[0] == "retry":
        assert decided[1] is not None
        age += decided[1]
        attempt += 1
    assert age >= 86_400 and decided[0] == "expired"
    assert attempt < 60, "about 30 attempts in a day, not thousands"
    assert retry_after("30") == 30 and retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_secrets_are_checked_without_being_echoed() -> None:
    for bad, why in [
        ("abc", "must be whsec_"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "too short"),
    ]:
        with pytest.raises(ConfigError, match=why) as err:
            parse_secret(SecretStr(bad))
        assert bad not in str(err.value)


def test_a_signature_verifies_with_the_standard_webhooks_library() -> None:
    """The headers our sender makes pass ``standardwebhooks.Webhook.verify``; a changed body
    or another secret does not."""
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    sender = Sender(SecretStr(secret), RetryPolicy(), allow_private=True)
    body = '{"type":"JobCompleted","timestamp":"2026-01-01T00:00:00Z","data":{"job_id":"j"}}'
    due = Due("msg_1", "j", "JobCompleted", body, "http://127.0.0.1:1/", 0, 0.0)
    headers = sender.headers(due, time.time())
    assert Webhook(secret).verify(body, headers)["data"] == {"job_id": "j"}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body.replace('"j"', '"k"'), headers)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(body, headers)


def test_the_body_is_the_event_whole_in_standard_webhooks_shape() -> None:
    from briefd.messages import StageSucceeded

    event = StageSucceeded(
        job_id="j", stage="PLAYS_MD", document="# Plays", elapsed_ms=5, attempts=1, ts=0.0
    )
    body = json.loads(body_of(event))
    assert body["type"] == "StageSucceeded"
    assert body["timestamp"] == "1970-01-01T00:00:00Z"
    assert body["data"]["document"] == "# Plays" and body["data"]["job_id"] == "j"
