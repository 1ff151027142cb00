"""Budgets: a stage that would pass its job's budget is never called; a spent daily budget
holds jobs queued until SIGHUP raises it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import HTTP, Daemon, make_job, wait_for

from briefd import run
from briefd.config import load_pipeline
from briefd.costs import Price
from briefd.costs.budget import JobBudget, refuse_stage
from briefd.limits.gcra import estimate_tokens
from briefd.messages import ErrorCode
from briefd.sim.server import SimServer

PRICE = '["sim-model"]\ninput = 1000.0\noutput = 1000.0\n'  # 0.001 USD a token


def test_refuse_stage_names_the_budget_and_the_estimate() -> None:
    budget = JobBudget(max_usd=0.01, usd_source="the job's max_cost_usd")
    kwargs: dict[str, Any] = {"stage": "S", "prompt_chars": 400, "max_tokens": 100}
    price = Price(1000.0, 1000.0)
    ok = refuse_stage(budget, price=price, spent_usd=0.0, spent_tokens=0, **kwargs)
    assert ok is None or ok.code is ErrorCode.BUDGET_EXCEEDED
    error = refuse_stage(budget, price=price, spent_usd=0.005, spent_tokens=0, **kwargs)
    assert error is not None and error.code is ErrorCode.BUDGET_EXCEEDED
    assert "max_cost_usd" in error.message and "0.200000" in error.message  # 200 tokens
    assert "max_cost_usd" in error.hint
    # The embedded model (no price) is never refused on cost, only on tokens.
    assert refuse_stage(budget, price=None, spent_usd=9.0, spent_tokens=0, **kwargs) is None
    tokens = JobBudget(max_tokens=150, tokens_source="BRIEFD_MAX_JOB_TOKENS")
    error = refuse_stage(tokens, price=None, spent_usd=0, spent_tokens=0, **kwargs)
    assert error is not None and "BRIEFD_MAX_JOB_TOKENS" in error.message


def test_small_job_budget_fails_the_last_stage_without_calling_it(
    sim: SimServer, make_settings: Any, make_job: Any, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICE)
    # The built-in pipeline without max_tokens: the estimates are then below what the
    # stages really use, so a budget can let three stages through and stop the fourth.
    built_in = Path(__file__).resolve().parent.parent / "config" / "pipeline.toml"
    lines = built_in.read_text(encoding="utf-8").splitlines()
    pipeline_file = tmp_path / "pipeline.toml"
    pipeline_file.write_text("\n".join(ln for ln in lines if not ln.startswith("max_tokens")))
    settings = make_settings(
        model="sim-model", prices=prices, parallel=False, pipeline=pipeline_file
    )
    # Measure what each stage really uses (the simulator's answers are deterministic).
    free = run(make_job("measure"), settings)
    used = {s: u.prompt_tokens + u.completion_tokens for s, u in free.metrics.usage.items()}
    pipeline = load_pipeline(pipeline_file)
    order = list(pipeline.order)
    last = order[-1]
    spec = pipeline.by_name[last]
    job = make_job("capped")
    est_last = estimate_tokens(len(job["prompts"][last]) + len(spec.system or ""), spec.max_tokens)
    spent_before_last = sum(used[s] for s in order[:-1])
    # One token short of what the last stage needs; the earlier stages all fit.
    budget_tokens = spent_before_last + est_last - 1
    for i, stage in enumerate(order[:-1]):
        st = pipeline.by_name[stage]
        est = estimate_tokens(len(job["prompts"][stage]) + len(st.system or ""), st.max_tokens)
        assert sum(used[s] for s in order[:i]) + est <= budget_tokens, "budget too small"
    job["max_cost_usd"] = budget_tokens * 0.001

    result = run(job, settings)

    assert result.status == "partial"
    assert [(e.stage, e.code) for e in result.errors] == [(last, ErrorCode.BUDGET_EXCEEDED)]
    assert "max_cost_usd" in result.errors[0].message
    assert result.metrics.attempts[last] == 0
    calls = sim.stats().by_job_stage["capped"]
    assert set(calls) == set(order[:-1]), calls  # the simulator never saw the last stage
    assert result.total_cost_usd == pytest.approx(spent_before_last * 0.001)


def _healthz(d: Daemon) -> dict[str, Any]:
    body: dict[str, Any] = HTTP.get(f"{d.url}/healthz", timeout=5).json()
    return body


def test_daily_budget_holds_jobs_queued_until_sighup_raises_it(
    sim: SimServer, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICE)
    config = tmp_path / "briefd.toml"
    config.write_text("daily_budget_usd = 0.001\n")  # spent by the first job
    d = Daemon(tmp_path, sim.base_url, model="sim-model", prices=prices, config=config)
    try:
        d.start()
        client = d.client()
        client.submit(make_job("first"))
        first = client.result("first", timeout=30)
        assert first.total_cost_usd > 0.001
        held = wait_for(lambda: _healthz(d).get("budget", {}).get("held"), 10)
        assert held, _healthz(d)
        client.submit(make_job("second"))
        health = _healthz(d)
        assert health["status"] == "ok"  # holding work by policy is healthy
        assert health["budget"]["held"] is True and health["budget"]["queued"] == 1
        assert client.status("second").status == "queued"
        assert "second" not in sim.stats().by_job_stage
        # Raise the budget and reload: the held job runs.
        config.write_text("daily_budget_usd = 100.0\n")
        d.signal(signal.SIGHUP)
        second = client.result("second", timeout=30)
        assert second.status == "succeeded"
        assert _healthz(d)["budget"]["held"] is False
        assert d.events("DailyBudgetSpent") and d.events("DailyBudgetReleased")
    finally:
        d.stop()
