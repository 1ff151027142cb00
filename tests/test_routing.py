"""Endpoints, model aliases, failover and circuit breakers, against real simulators.

Two simulators on loopback play two providers; one fails the way real ones do
(503 to everything, or nothing listening at all). What is checked is what a team
relies on: every stage still produces its document on the endpoint that works,
the result says which endpoint and model served each document, a dead endpoint
is left at once (no backoff spent on it) and, once its breaker is open, not called.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import briefd
from briefd.config import ConfigError, Settings
from briefd.config.endpoints import Route, load_endpoints
from briefd.llm.routing import Breakers
from briefd.local.provider import open_provider
from briefd.messages import EndpointCircuitChanged, Event, StageFailedOver, StageStarted
from briefd.sim.faults import Fault
from briefd.sim.server import SimProfile, SimServer

SCALE = 0.01


@pytest.fixture
def second_sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=SCALE)) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoints_file(tmp_path: Path, a_url: str, b_url: str, **extra: str) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        f"""
[[endpoints]]
name = "a"
kind = "compatible"
base_url = "{a_url}"

[[endpoints]]
name = "b"
kind = "openai"
base_url = "{b_url}"
api_key_env = "B_KEY"

[[models]]
name = "strong"
use = ["a:model-a", "b:model-b"]

[[models]]
name = "fast"
use = ["b:model-fast"]
""",
        encoding="utf-8",
    )
    return path


def _settings(path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "endpoints": path,
        "model": "strong",
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_ms": 5_000,
        "max_retries": 2,
    }
    values.update(overrides)
    return Settings(**values)


def _run(
    settings: Settings, jobs: list[dict[str, Any]], snaps: list[Any] | None = None
) -> tuple[list[Any], list[Event]]:
    events: list[Event] = []
    with briefd.Pipeline(settings, observers=[events.append]) as pipeline:
        futures = [pipeline.submit(job) for job in jobs]
        results = [f.get(timeout=60) for f in futures]
        if snaps is not None:
            snaps.append(pipeline.metrics())
    return results, events


def test_every_stage_fails_over_from_a_503_endpoint_and_says_who_served_it(
    sim: SimServer, second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    """Endpoint a answers 503 to everything: each stage leaves it once a's retries are
    spent, ends on b, and the result names b and the model b reported."""
    monkeypatch.setenv("B_KEY", "sk-test-b")
    sim.inject(Fault(status=503, times=None))
    settings = _settings(_endpoints_file(tmp_path, sim.base_url, second_sim.base_url))
    (result,), events = _run(settings, [make_job("fo-1")])
    assert result.status == "succeeded", result.errors
    assert set(result.served_by) == set(result.documents)
    assert all(v.startswith("b:") for v in result.served_by.values()), result.served_by
    moves = [e for e in events if isinstance(e, StageFailedOver)]
    assert moves and all(m.from_route == "a:model-a" and m.to_route == "b:model-b" for m in moves)
    # b was asked for the alias's model on b, by name; a never served a document.
    b_stats = second_sim.stats()
    assert b_stats.completed == 4
    assert b_stats.last_authorization == "Bearer sk-test-b"


def test_an_open_breaker_is_skipped_without_a_call(
    sim: SimServer, second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    """After breaker_failures failures a's breaker opens: later stages go straight to b
    (StageFailedOver with skipped=True) and a sees no more requests."""
    monkeypatch.setenv("B_KEY", "sk-test-b")
    sim.inject(Fault(status=503, times=None))
    settings = _settings(
        _endpoints_file(tmp_path, sim.base_url, second_sim.base_url),
        max_retries=0,
        breaker_failures=2,
        breaker_cooldown_s=300,
        parallel=False,
    )
    snaps: list[Any] = []
    results, events = _run(settings, [make_job("br-1"), make_job("br-2")], snaps)
    assert all(r.status == "succeeded" for r in results), [r.errors for r in results]
    # The same story in the metrics (/metrics reads them): a's breaker open, 8 moves a -> b,
    # 8 documents served by b.
    (snap,) = snaps
    assert snap.circuits == {"a": "open"}
    assert snap.failovers == {("a", "b"): 8}
    assert sum(n for route, n in snap.served_by.items() if route.startswith("b:")) == 8
    opened = [e for e in events if isinstance(e, EndpointCircuitChanged) and e.state == "open"]
    assert [e.endpoint for e in opened] == ["a"]
    # No call starts at a once its breaker is open; one already on the wire when it opened
    # (K=2: at most one more) may end after it.
    (opened_at,) = [e.ts for e in opened]
    starts_at_a = [e.ts for e in events if isinstance(e, StageStarted) and e.endpoint == "a"]
    assert all(ts <= opened_at for ts in starts_at_a)
    calls_to_a = sim.stats().total_requests
    assert calls_to_a == len(starts_at_a) and 2 <= calls_to_a <= 3
    skipped = [e for e in events if isinstance(e, StageFailedOver) and e.skipped]
    assert len(skipped) == 8 - calls_to_a


def test_a_refused_connection_fails_over_at_once(
    second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    """Nothing listens on a: the stage moves to b on the first refusal, no retry on a."""
    monkeypatch.setenv("B_KEY", "sk-test-b")
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    settings = _settings(
        _endpoints_file(tmp_path, dead, second_sim.base_url), backoff_initial_s=30.0
    )
    (result,), events = _run(settings, [make_job("cr-1")])
    assert result.status == "succeeded", result.errors
    started_on_a = [e for e in events if isinstance(e, StageStarted) and e.endpoint == "a"]
    # One call per stage at most on a, never a retry there (a backoff would be 30 s).
    assert len(started_on_a) <= 4
    assert result.metrics.total_ms < 10_000


def test_a_job_overrides_a_stages_model(
    sim: SimServer, second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    """The job's "models" sends ANNEX_JSON to the fast alias; the rest keep the default."""
    monkeypatch.setenv("B_KEY", "sk-test-b")
    settings = _settings(_endpoints_file(tmp_path, sim.base_url, second_sim.base_url))
    job = make_job("ov-1", models={"ANNEX_JSON": "fast"})
    (result,), events = _run(settings, [job])
    assert result.status == "succeeded"
    starts = {e.stage: (e.endpoint, e.model) for e in events if isinstance(e, StageStarted)}
    assert starts["ANNEX_JSON"] == ("b", "model-fast")
    assert starts["BRIEFING_MD"] == ("a", "model-a")


def test_an_endpoints_file_lists_every_mistake_on_its_own_line(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[[endpoints]]
name = "x"
kind = "anthropic"
base_url = "ftp://x"
api_key_env = "NOPE_KEY"

[[endpoints]]
name = "az"
kind = "azure"
base_url = "https://r.openai.azure.com"

[[models]]
name = "m"
use = ["y:gpt-4o"]
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_endpoints(path)
    lines = str(caught.value).splitlines()
    assert all(str(path) in line for line in lines)
    text = str(caught.value)
    assert "kind: must be one of openai, azure, compatible" in text
    assert "base_url: must be an http(s) URL" in text
    assert "the variable NOPE_KEY is not set" in text
    assert "api_key_env: required for kind azure" in text
    assert "api_version: required for kind azure" in text
    assert "unknown endpoint 'y'" in text
    assert len(lines) == 6


def test_a_missing_model_is_found_or_refused_before_any_call(sim: SimServer) -> None:
    """No BRIEFD_MODEL: the server's only model is used; a server that lists none is refused,
    naming BRIEFD_MODEL, before any chat call."""
    provider = open_provider(Settings(base_url=sim.base_url))
    (route,) = provider.routing.routes(None)
    assert route.model and route == Route("default", provider.model)
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(ConfigError, match="BRIEFD_MODEL: not set"):
        open_provider(Settings(base_url=dead))
    assert sim.stats().total_requests == 0  # /models is not a chat call


def test_a_query_string_in_the_base_url_is_refused_unless_azure() -> None:
    with pytest.raises(ConfigError, match="BRIEFD_BASE_URL: a query string"):
        open_provider(Settings(base_url="http://127.0.0.1:9/v1?api-version=2024-10-21"))
    provider = open_provider(
        Settings(
            base_url="http://127.0.0.1:9?api-version=2024-10-21",
            endpoint_kind="azure",
            model="gpt4o-prod",
        )
    )
    spec = provider.routing.endpoints["default"]
    assert spec.api_version == "2024-10-21" and "?" not in spec.base_url


def test_breaker_opens_probes_once_and_closes() -> None:
    """Closed -> open after N failures -> one probe after the cool-down -> closed on success."""
    now = [0.0]
    seen: list[EndpointCircuitChanged] = []
    b = Breakers(failures=2, cooldown_s=10, clock=lambda: now[0], on_change=seen.append)
    b.failed("a", "SERVER_ERROR: 503")
    assert b.allow("a")
    b.failed("a", "SERVER_ERROR: 503")
    assert not b.allow("a")
    now[0] = 10.0
    assert b.allow("a")  # the probe
    assert not b.allow("a")  # only one
    b.succeeded("a")
    assert b.allow("a") and b.allow("a")
    assert [e.state for e in seen] == ["open", "half_open", "closed"]


def test_a_job_naming_an_unknown_model_is_refused_before_it_starts(
    sim: SimServer, second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("B_KEY", "sk-test-b")
    settings = _settings(_endpoints_file(tmp_path, sim.base_url, second_sim.base_url))
    with briefd.Pipeline(settings) as pipeline, pytest.raises(ConfigError) as caught:
        pipeline.submit(make_job("bad-model", models={"ANNEX_JSON": "nope"}))
    assert "models.ANNEX_JSON" in str(caught.value) and "'nope'" in str(caught.value)
    assert sim.stats().total_requests == second_sim.stats().total_requests == 0


def test_an_endpoints_own_cap_holds_under_the_global_one(
    sim: SimServer, second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    """max_concurrent = 1 on endpoint a: at K=4 with several jobs, a never has two calls
    in flight, while b (no cap of its own) takes up to K."""
    monkeypatch.setenv("B_KEY", "sk-test-b")
    path = _endpoints_file(tmp_path, sim.base_url, second_sim.base_url)
    text = path.read_text().replace(
        'kind = "compatible"\n', 'kind = "compatible"\nmax_concurrent = 1\n'
    )
    path.write_text(text)
    settings = _settings(path, max_concurrent=4)
    jobs = [make_job(f"cap-{i}", models={"ANNEX_JSON": "fast"}) for i in range(4)]
    results, _ = _run(settings, jobs)
    assert all(r.status == "succeeded" for r in results)
    assert sim.stats().max_in_flight == 1
    assert sim.stats().completed == 4 * 3


def test_the_console_shows_which_endpoint_served_and_whose_breaker_is_open(
    sim: SimServer, second_sim: SimServer, tmp_path: Path, make_job: Any, monkeypatch: Any
) -> None:
    """The events of a failover run, as the log holds them, make one console line:
    a open (skipped, left), b closed having served every document."""
    import io

    from log_helpers import log_record
    from rich.console import Console

    from briefd.ops.console import render
    from briefd.ops.view import OpsView

    monkeypatch.setenv("B_KEY", "sk-test-b")
    sim.inject(Fault(status=503, times=None))
    settings = _settings(
        _endpoints_file(tmp_path, sim.base_url, second_sim.base_url),
        max_retries=0,
        breaker_failures=2,
        breaker_cooldown_s=300,
    )
    _, events = _run(settings, [make_job("con-1"), make_job("con-2")])
    view = OpsView()
    for event in events:
        view.apply(log_record(event))
    snap = view.snapshot()
    assert snap.endpoints["a"]["state"] == "open"
    assert snap.endpoints["b"]["served"] == 8 and snap.endpoints["a"]["served"] == 0
    assert snap.endpoints["a"]["failed_over"] + snap.endpoints["a"]["skipped"] == 8
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render(snap, source="test"))
    line = next(x for x in out.getvalue().splitlines() if x.lstrip().startswith("endpoints"))
    assert "a open" in line and "b closed, served 8" in line and "probe in" in line
