"""briefd against the OpenAI API as it really is: the strict simulator.

The strict simulator refuses what OpenAI refuses (unknown arguments, no model,
an inline schema in json_object, a Bearer key on Azure) and answers as OpenAI
does (dated model names, cached tokens, rate headers). The README's main job
and the example job must succeed on it unchanged; a job with no model must be
refused before any call; costs must follow the model the server named.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import briefd
from briefd.config import Settings
from briefd.costs import load_prices
from briefd.messages import StageStarted
from briefd.sim.faults import Fault
from briefd.sim.server import SimProfile, SimServer

SCALE = 0.0


@pytest.fixture
def strict() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=SCALE), strict=True, api_key="sk-strict-1") as server:
        yield server


def _run_cli(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _run_example(
    repo: Path, tmp_path: Path, briefd_cmd: Any, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`briefd run examples/northwind-briefing.json` as the README runs it; its output dir."""
    out = tmp_path / "out"
    job = str(repo / "examples/northwind-briefing.json")
    return _run_cli(briefd_cmd("run", job, "--out", str(out)), env, tmp_path), out


def test_the_example_job_succeeds_unchanged_on_a_strict_openai_endpoint(
    strict: SimServer, repo: Path, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """`briefd run examples/northwind-briefing.json` with the built-in pipeline: exit 0,
    four documents, each served by the dated model, priced by it, nothing refused."""
    env = child_env(
        BRIEFD_BASE_URL=strict.base_url, BRIEFD_MODEL="gpt-4o", BRIEFD_API_KEY="sk-strict-1"
    )
    done, out = _run_example(repo, tmp_path, briefd_cmd, env)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert set(result["served_by"].values()) == {"default:gpt-4o-2024-08-06"}
    assert result["total_cost_usd"] > 0  # the dated name found gpt-4o's price
    stats = strict.stats()
    assert stats.by_status == {200: 4}, stats.by_status  # not one refusal on the way
    assert "sk-strict-1" not in done.stdout + done.stderr


def test_no_model_is_refused_before_any_call_naming_the_variable(
    strict: SimServer, repo: Path, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """The server offers several models: exit 2, one line naming BRIEFD_MODEL and some of
    them; no chat call was made."""
    env = child_env(BRIEFD_BASE_URL=strict.base_url, BRIEFD_API_KEY="sk-strict-1")
    done, _ = _run_example(repo, tmp_path, briefd_cmd, env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "BRIEFD_MODEL" in lines[0] and "gpt-4o" in lines[0]
    assert strict.stats().total_requests == 0


def test_azure_deployments_through_an_endpoints_file(
    tmp_path: Path, make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kind azure: the deployment in the path, api-version in the query, the key in api-key;
    the result names the model the deployment serves."""
    monkeypatch.setenv("AZ_KEY", "az-secret-9")
    with SimServer(
        SimProfile(scale=SCALE),
        strict=True,
        api_key="az-secret-9",
        deployments={"gpt4o-prod": "gpt-4o"},
    ) as az:
        path = tmp_path / "endpoints.toml"
        path.write_text(
            f"""
[[endpoints]]
name = "azure-eu"
kind = "azure"
base_url = "{az.azure_endpoint}"
api_version = "2024-10-21"
api_key_env = "AZ_KEY"

[[models]]
name = "strong"
use = ["azure-eu:gpt4o-prod"]
""",
            encoding="utf-8",
        )
        settings = Settings(endpoints=path, model="strong")
        result = briefd.run(make_job("az-1"), settings)
        assert result.status == "succeeded", result.errors
        assert set(result.served_by.values()) == {"azure-eu:gpt-4o-2024-08-06"}
        assert az.stats().by_status == {200: 4}


def test_failover_between_two_strict_providers(
    tmp_path: Path, make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Provider a answers 503 to everything: every stage ends on b with b's dated model."""
    monkeypatch.setenv("A_KEY", "sk-a")
    monkeypatch.setenv("B_KEY", "sk-b")
    dead = SimProfile(scale=SCALE, faults=[Fault(status=503, times=None)])
    with (
        SimServer(dead, strict=True, api_key="sk-a") as a,
        SimServer(SimProfile(scale=SCALE), strict=True, api_key="sk-b") as b,
    ):
        path = tmp_path / "endpoints.toml"
        path.write_text(
            f"""
[[endpoints]]
name = "a"
kind = "openai"
base_url = "{a.base_url}"
api_key_env = "A_KEY"

[[endpoints]]
name = "b"
kind = "openai"
base_url = "{b.base_url}"
api_key_env = "B_KEY"

[[models]]
name = "strong"
use = ["a:gpt-4o", "b:gpt-4o-mini"]
""",
            encoding="utf-8",
        )
        settings = Settings(endpoints=path, model="strong", max_retries=1, backoff_initial_s=0.01)
        result = briefd.run(make_job("fo-strict"), settings)
        assert result.status == "succeeded", result.errors
        assert set(result.served_by.values()) == {"b:gpt-4o-mini-2024-07-18"}
        assert b.stats().by_status == {200: 4}


def test_cached_tokens_are_priced_at_the_cached_price(make_job: Any, tmp_path: Path) -> None:
    """Half of every prompt is served from cache: the cost is exactly the served model's
    (prompt - cached) x input + cached x cached_input + completion x output."""
    with SimServer(SimProfile(scale=SCALE), strict=True, cached_fraction=0.5) as sim:
        events: list[Any] = []
        settings = Settings(base_url=sim.base_url, model="gpt-4o-mini")
        with briefd.Pipeline(settings, observers=[events.append]) as p:
            result = p.submit(make_job("cache-1")).get(timeout=60)
    assert result.status == "succeeded"
    price = load_prices(None).price("gpt-4o-mini-2024-07-18")
    assert price.cached_input is not None and price.cached_input < price.input
    for stage, usage in result.metrics.usage.items():
        assert usage.cached_tokens > 0
        expected = price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        assert result.cost_usd[stage] == expected
    assert {e.model for e in events if isinstance(e, StageStarted)} == {"gpt-4o-mini"}


def test_a_budget_holds_when_the_model_was_found_not_named(make_job: Any) -> None:
    """No BRIEFD_MODEL and a server with one model: that model is priced, so a tiny budget
    refuses stages instead of letting all four run at "$0"."""
    with SimServer(
        SimProfile(scale=SCALE), strict=True, models={"gpt-4o": "gpt-4o-2024-08-06"}
    ) as sim:
        result = briefd.run(
            make_job("budget-1", max_cost_usd=0.000001), Settings(base_url=sim.base_url)
        )
        assert {e.code.value for e in result.errors} == {"BUDGET_EXCEEDED"}
        assert sim.stats().total_requests == 0


def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature(
    strict: SimServer, repo: Path, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """o4-mini refuses max_tokens and a temperature other than 1 (as OpenAI's o-series do):
    the example job still succeeds on it, unchanged, and its reasoning tokens are counted."""
    env = child_env(
        BRIEFD_BASE_URL=strict.base_url, BRIEFD_MODEL="o4-mini", BRIEFD_API_KEY="sk-strict-1"
    )
    done, out = _run_example(repo, tmp_path, briefd_cmd, env)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert set(result["served_by"].values()) == {"default:o4-mini-2025-04-16"}
    assert all(u["reasoning_tokens"] > 0 for u in result["metrics"]["usage"].values())
    assert strict.stats().by_status == {200: 4}
