"""The cost ledger: the price table, a stage's cost, and the costs a job's result carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from briefd import run
from briefd.config import ConfigError
from briefd.costs import (
    FREE,
    Price,
    PriceTable,
    estimate_cost,
    load_prices,
    stage_cost,
    usage_cost,
)
from briefd.messages import JobResult, Usage
from briefd.sim.server import SimServer


def test_built_in_table_prices_known_models_with_cached_input() -> None:
    table = load_prices()
    assert table.price("gpt-4o-mini") == Price(0.15, 0.60, cached_input=0.075)
    assert table.price("gpt-4o") == Price(2.50, 10.00, cached_input=1.25)
    # Every built-in entry has a cached price below its input price (they are examples,
    # but a cache discount that costs more would be a typo).
    for name, price in table.prices.items():
        assert price.cached_input is not None and price.cached_input <= price.input, name


def test_dated_snapshots_find_their_family_and_nothing_else(log_lines: list[str]) -> None:
    """gpt-4o-2024-08-06 is gpt-4o; gpt-4o-mini-2024-07-18 is gpt-4o-mini, not gpt-4o;
    a name that only starts like a listed one is another model, unpriced (and said so)."""
    table = load_prices()
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("gpt-4o-mini-2024-07-18") != table.price("gpt-4o")
    assert table.price("gpt-4.1-nano-2025-04-14") == table.price("gpt-4.1-nano")
    assert table.price("o3-mini-2025-01-31") == table.price("o3-mini")
    assert table.price("openai/gpt-4o-mini") == table.price("gpt-4o-mini")  # a gateway's name
    mine = PriceTable({"gpt-4": Price(30.0, 60.0), "claude-3-5-haiku": Price(0.8, 4.0)}, "mine")
    assert mine.price("gpt-4-0613") == Price(30.0, 60.0)  # an older date style
    assert mine.price("claude-3-5-haiku-20241022") == Price(0.8, 4.0)  # Anthropic's
    assert mine.lookup("gpt-4-06") is None and mine.lookup("gpt-4-2024-08") is None
    assert mine.price("gpt-4-turbo") == FREE  # not gpt-4's price: another model
    assert mine.lookup("gpt-4o-audio-preview") is None
    assert any("no price for model 'gpt-4-turbo' in mine" in line for line in log_lines)


def test_an_unpriced_model_is_warned_about_once_and_costs_zero(log_lines: list[str]) -> None:
    table = PriceTable({"m": Price(1.0, 1.0)}, "prices file t.toml")
    usage = Usage(prompt_tokens=1_000, completion_tokens=1_000)
    for _ in range(3):
        assert stage_cost(usage, "llama-3-70b", table) == 0.0
    warned = [line for line in log_lines if "no price for model 'llama-3-70b'" in line]
    assert len(warned) == 1 and "t.toml" in warned[0] and "WARNING" in warned[0], log_lines
    # A model nobody named (no BRIEFD_MODEL, nothing reported) is said so, once too.
    assert stage_cost(usage, "", table) == 0.0
    assert stage_cost(usage, "", table) == 0.0
    assert sum("no price for model ''" in line for line in log_lines) == 1
    # A default entry prices it quietly; a listed zero price is a choice, not warned.
    quiet = PriceTable({"default": Price(1.0, 2.0), "free-model": Price(0.0, 0.0)}, "quiet-t")
    assert stage_cost(usage, "llama-3-70b", quiet) == pytest.approx(0.003)
    assert stage_cost(usage, "free-model", quiet) == 0.0
    assert not any("quiet-t" in line for line in log_lines)


def test_cached_input_and_reasoning_tokens_are_priced_as_billed() -> None:
    """(prompt - cached) x input + cached x cached_input + completion x output; reasoning
    tokens are part of completion_tokens, so they are output and never counted twice."""
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    usage = Usage(
        prompt_tokens=10_000, completion_tokens=3_000, cached_tokens=6_000, reasoning_tokens=2_000
    )
    expected = (4_000 * 2.0 + 6_000 * 0.5 + 3_000 * 8.0) / 1e6
    assert usage_cost(usage, price) == pytest.approx(expected)
    table = PriceTable({"gpt-4.1": price})
    assert stage_cost(usage, "gpt-4.1-2025-04-14", table) == pytest.approx(expected)
    # No cached_input: cached tokens cost the input price (a table from before caching).
    plain = Price(input=2.0, output=8.0)
    assert usage_cost(usage, plain) == pytest.approx((10_000 * 2.0 + 3_000 * 8.0) / 1e6)
    # A cached count above the prompt's (a server's nonsense) is held to the prompt.
    odd = Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=500)
    assert usage_cost(odd, price) == pytest.approx(100 * 0.5 / 1e6)
    # The estimate before a call assumes nothing cached: the worst case.
    assert estimate_cost(1_000, 500, price) == pytest.approx((1_000 * 2.0 + 500 * 8.0) / 1e6)


def test_stage_cost_is_per_million_and_local_is_free() -> None:
    table = PriceTable({"m": Price(input=2.0, output=10.0)})
    usage = Usage(prompt_tokens=1_000, completion_tokens=500)
    assert stage_cost(usage, "m", table) == pytest.approx(0.002 + 0.005)
    assert stage_cost(usage, "m", table, local=True) == 0.0
    assert stage_cost(usage, "unknown", table) == 0.0  # no default entry: free


def test_user_file_replaces_the_table_and_errors_name_file_and_key(tmp_path: Path) -> None:
    good = tmp_path / "prices.toml"
    good.write_text('[default]\ninput = 1.0\noutput = 2.0\n["my-model"]\ninput = 3\n')
    table = load_prices(good)
    assert table.price("my-model") == Price(3.0, 0.0)
    assert table.price("gpt-4o") == Price(1.0, 2.0)  # not taken from the built-in file
    cached = tmp_path / "cached.toml"
    cached.write_text('["m"]\ninput = 1\ncached_input = 0.1\noutput = 2\n')
    assert load_prices(cached).price("m") == Price(1.0, 2.0, cached_input=0.1)
    neg = tmp_path / "neg.toml"
    neg.write_text('["m"]\ninput = 1\ncached_input = -0.1\n')
    with pytest.raises(ConfigError, match=r"neg\.toml.*'m'.*cached_input"):
        load_prices(neg)
    bad = tmp_path / "bad.toml"
    bad.write_text('["gpt-4o"]\ninput = -1\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*gpt-4o.*input"):
        load_prices(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('["gpt-4o"]\ninptu = 1\n')
    with pytest.raises(ConfigError, match=r"typo\.toml.*'inptu'"):
        load_prices(typo)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_prices(tmp_path / "missing.toml")


def test_old_results_without_costs_still_parse() -> None:
    result = JobResult.model_validate(
        {
            "job_id": "old",
            "status": "succeeded",
            "documents": {},
            "errors": [],
            "fallbacks": [],
            "progress": {"stages": {}, "percent": 100.0},
            "metrics": {
                "stages_ms": {},
                "parallel_group_ms": 0,
                "sequential_group_ms": 0,
                "total_ms": 0,
                "speedup_ratio": 1.0,
                "usage": {},
                "attempts": {},
            },
        }
    )
    assert result.cost_usd == {} and result.total_cost_usd == 0.0


def test_job_result_carries_cost_per_stage_and_total(
    sim: SimServer, make_settings: object, make_job: object, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('["sim-model"]\ninput = 1000.0\noutput = 2000.0\n')
    settings = make_settings(model="sim-model", prices=prices)  # type: ignore[operator]
    result = run(make_job("costed"), settings)  # type: ignore[operator]
    assert result.status == "succeeded"
    assert result.model == "sim-model"
    usage = result.metrics.usage
    for stage, u in usage.items():
        expected = (u.prompt_tokens * 1000 + u.completion_tokens * 2000) / 1e6
        assert u.prompt_tokens > 0
        assert result.cost_usd[stage] == pytest.approx(expected)
    assert result.total_cost_usd == pytest.approx(sum(result.cost_usd.values()))
    assert result.total_cost_usd > 0


def _log_of(tmp_path: Path, results: list[JobResult]) -> Path:
    """An event log of these results' JobCompleted events, one a second."""
    from briefd.messages import JobCompleted
    from briefd.ops.eventlog import dumps_line, event_payload, level_for, line_of

    log = tmp_path / "briefd.log"
    lines = []
    for i, result in enumerate(results):
        event = JobCompleted(job_id=result.job_id, result=result)
        line = line_of(event_payload(event), level_for(event.type), "job completed")
        line["ts"] = 1_700_000_000.0 + i
        lines.append(dumps_line(line))
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return log


def test_report_totals_spend_by_model_and_stage(
    sim: SimServer, make_settings: Any, make_job: Any, tmp_path: Path, capsys: Any
) -> None:
    import json

    from briefd.ops import report

    prices = tmp_path / "prices.toml"
    prices.write_text('["a"]\ninput = 1000.0\noutput = 1000.0\n["b"]\ninput = 1.0\n')
    results = [
        run(make_job(f"j{i}"), make_settings(model=model, prices=prices))
        for i, model in enumerate(("a", "a", "b"))
    ]
    assert report.main([str(_log_of(tmp_path, results)), "--json"]) == 0
    spend = json.loads(capsys.readouterr().out)["spend"]
    assert spend["total_usd"] == pytest.approx(sum(r.total_cost_usd for r in results))
    assert spend["by_model"]["a"] == pytest.approx(results[0].total_cost_usd * 2)
    assert spend["by_model"]["b"] == pytest.approx(results[2].total_cost_usd)
    for stage in results[0].cost_usd:
        assert spend["by_stage"][stage] == pytest.approx(sum(r.cost_usd[stage] for r in results))
    # The text report shows the spend line with its total.
    assert report.main([str(_log_of(tmp_path, results)), "--width", "200"]) == 0
    text = capsys.readouterr().out
    assert f"${spend['total_usd']:,.4f} total" in text
