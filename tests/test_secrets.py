"""The API key is sent to the API and nowhere else: not in logs, results or errors."""

from __future__ import annotations

from typing import Any

import briefd
from briefd import redaction
from briefd.config import Settings
from briefd.llm.call import ChatClient
from briefd.ops import logs
from briefd.sim.server import Fault, SimServer

KEY = "sk-live-DO-NOT-LEAK-4242"


def test_api_key_never_appears_in_logs_or_results(
    sim: SimServer, make_settings: Any, make_job: Any, log_lines: list[str]
) -> None:
    """With failures and retries logged at DEBUG, the key is in no log line and no result,
    yet the server received it as a bearer token."""
    sim.inject(Fault(stage="PLAYS_MD", status=401, times=None))
    sim.inject(Fault(stage="BRIEFING_MD", status=503, times=1))
    settings = make_settings(api_key=KEY)
    result = briefd.run(make_job(), settings)
    assert sim.stats().last_authorization == f"Bearer {KEY}"
    assert result.errors and result.errors[0].hint == "check BRIEFD_API_KEY"
    assert KEY not in result.model_dump_json()
    assert log_lines, "nothing was logged"
    assert not [line for line in log_lines if KEY in line]
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_credential_headers_are_redacted_in_any_shape() -> None:
    """``Authorization``, ``api-key`` and ``x-api-key`` values, any case, as a header line, JSON,
    escaped JSON, a Python dict or a query pair, are redacted; prose that names them is not."""
    cases = {
        "Authorization: Basic dXNlcjpwYXNz": "Authorization: Basic [REDACTED]",
        '{"authorization":"Bearer abc.def-123"}': '{"authorization":"Bearer [REDACTED]"}',
        "{'X-Api-Key': 'k3y-value', 'A': 1}": "{'X-Api-Key': '[REDACTED]', 'A': 1}",
        "api-key: k3y-value\r\nnext: 1": "api-key: [REDACTED]\r\nnext: 1",
        "API_KEY=k3y-value&x=1": "API_KEY=[REDACTED]&x=1",
        '{\\"x-api-key\\": \\"k3y\\"}': '{\\"x-api-key\\": \\"[REDACTED]\\"}',
        "PROXY-AUTHORIZATION: Digest qop": "PROXY-AUTHORIZATION: Digest [REDACTED]",
        "x-api-key: [REDACTED]": "x-api-key: [REDACTED]",  # twice is once
        "the authorization failed; api_key_id 7": "the authorization failed; api_key_id 7",
    }
    for text, expected in cases.items():
        assert redaction.redact(text) == expected, text
    assert logs.redact is redaction.redact and logs.register_secret is redaction.register_secret


def test_the_chat_client_registers_the_key_it_sends() -> None:
    """A key no pattern knows is redacted once a client has been made with it."""
    key = "zq-unpatterned-5521-key"
    assert redaction.redact(f"echo {key}") == f"echo {key}"
    settings = Settings(base_url="http://127.0.0.1:9/v1", api_key=key)
    ChatClient(settings, "http://127.0.0.1:9/v1").close()
    assert redaction.redact(f"echo {key}.") == "echo [REDACTED]."
