"""The API key is sent to the API and nowhere else: not in logs, results or errors."""

from __future__ import annotations

from typing import Any

import briefd
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
