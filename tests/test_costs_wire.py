"""Costs as the wire reports them: cached and reasoning tokens, the served model's name.

Real answers' shapes (OpenAI's, Azure's, a compatible server's) are parsed as they
come; then a real HTTP path: a loopback proxy in front of the simulator adds what
the OpenAI API reports and the lenient simulator does not (``prompt_tokens_details``,
``completion_tokens_details``, a dated model name), so the tokens are followed from
the wire through :class:`~briefd.llm.call.ChatClient`, a stage's retries, the
metrics and the job's cost. A price table with a wrong key is bad input wherever
briefd starts: ``briefd.Pipeline``, ``briefd run``, ``briefd serve``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import HTTP, Daemon
from prometheus_client.parser import text_string_to_metric_families

import briefd
from briefd.config import ConfigError, Settings, load_pipeline
from briefd.costs.daily import DailyLedger
from briefd.llm.answer import parse_completion
from briefd.llm.call import ChatClient, build_request
from briefd.messages import JobResult, Usage
from briefd.sim.server import Fault, SimServer

# OpenAI's Chat Completions answer as its API reference shows it (ids shortened).
OPENAI_ANSWER = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The image shows a wooden boardwalk.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


def _answer(**changes: Any) -> bytes:
    body = json.loads(json.dumps(OPENAI_ANSWER))
    for key, value in changes.items():
        if key == "usage_update":
            body["usage"].update(value)
        else:
            body[key] = value
    return json.dumps(body).encode()


def test_parse_reads_cached_and_reasoning_tokens_and_the_served_model() -> None:
    c = parse_completion(_answer())
    assert c.model == "gpt-4o-2024-08-06"
    assert c.usage == Usage(prompt_tokens=1117, completion_tokens=46, cached_tokens=1024)
    # A reasoning model (o3-mini): its thinking is part of completion_tokens.
    reasoning = _answer(
        model="o3-mini-2025-01-31",
        usage_update={
            "completion_tokens": 1260,
            "completion_tokens_details": {"reasoning_tokens": 1024},
        },
    )
    c = parse_completion(reasoning)
    assert (c.model, c.usage.completion_tokens, c.usage.reasoning_tokens) == (
        "o3-mini-2025-01-31",
        1260,
        1024,
    )


@pytest.mark.parametrize(
    ("usage_update", "cached", "reasoning"),
    [
        # vLLM and others send the details as null, or not at all.
        ({"prompt_tokens_details": None, "completion_tokens_details": None}, 0, 0),
        ({"prompt_tokens_details": "x", "completion_tokens_details": [1]}, 0, 0),
        ({"prompt_tokens_details": {"cached_tokens": -5}}, 0, 0),
        ({"prompt_tokens_details": {"cached_tokens": "12"}}, 0, 0),
        ({"prompt_tokens_details": {"cached_tokens": True}}, 0, 0),
        ({"prompt_tokens_details": {"cached_tokens": 64.0}}, 64, 0),
        # More cached than prompted, more reasoning than completed: held to the whole.
        ({"prompt_tokens_details": {"cached_tokens": 10**6}}, 1117, 0),
        ({"completion_tokens_details": {"reasoning_tokens": 999}}, 1024, 46),
    ],
)
def test_malformed_usage_details_count_zero_or_are_held_to_their_whole(
    usage_update: dict[str, Any], cached: int, reasoning: int
) -> None:
    c = parse_completion(_answer(usage_update=usage_update))
    assert (c.usage.cached_tokens, c.usage.reasoning_tokens) == (cached, reasoning)
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (1117, 46)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llama3.2:3b", "llama3.2:3b"),  # Ollama's names
        ("  gpt-4o  ", "gpt-4o"),
        (12, None),
        (None, None),
        ("", None),
        ({"id": "gpt-4o"}, None),
        ("evil\r\nINFO forged line\x1b[31m", "evil INFO forged line\\u001b[31m"),
        ("m" * 5000, "m" * 200),
    ],
)
def test_the_served_model_is_made_safe_like_any_upstream_text(model: Any, expected: Any) -> None:
    assert parse_completion(_answer(model=model)).model == expected


def test_a_key_echoed_as_the_model_name_is_redacted() -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 6
    briefd.redaction.register_secret(secret)
    model = parse_completion(_answer(model=f"gpt-4o {secret}")).model
    assert model is not None and secret not in model and model.startswith("gpt-4o")


# -- over HTTP ------------------------------------------------------------------------


class _Proxy:
    """A loopback proxy to the simulator that answers as the OpenAI API reports usage.

    Each answer gets a dated model name, ``cached_tokens`` (3/4 of the prompt) and
    ``reasoning_tokens`` (1/2 of the completion); what it added is kept per stage. It does
    not stream (a streamed answer's usage is read by the same code: tests/test_sse.py).
    """

    served_model = "gpt-4o-2024-08-06"

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.added: dict[str, list[tuple[int, int]]] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self, body: bytes | None) -> None:
                url = sim.base_url.rsplit("/v1", 1)[0] + self.path
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                req = urllib.request.Request(url, data=body, headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        status, raw = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    status, raw = err.code, err.read()
                if status == 200 and self.command == "POST":
                    raw = proxy._decorate(self.headers.get("X-Briefd-Stage", ""), raw)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # It decorates whole answers: as a server that does not stream, it drops
                # stream (and stream_options) and answers JSON, which the client reads whole.
                body = json.loads(raw)
                body.pop("stream", None)
                body.pop("stream_options", None)
                data = json.dumps(body).encode()
                self.headers.replace_header("Content-Length", str(len(data)))
                self._forward(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _decorate(self, stage: str, raw: bytes) -> bytes:
        body = json.loads(raw)
        usage = body["usage"]
        cached, reasoning = usage["prompt_tokens"] * 3 // 4, usage["completion_tokens"] // 2
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        body["model"] = self.served_model
        with self._lock:
            self.added.setdefault(stage, []).append((cached, reasoning))
        return json.dumps(body).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def proxy(sim: SimServer) -> Iterator[_Proxy]:
    p = _Proxy(sim)
    try:
        yield p
    finally:
        p.close()


def test_chat_client_reads_details_and_model_over_http(proxy: _Proxy) -> None:
    settings = Settings(base_url=proxy.base_url, model="gpt-4o", timeout_ms=5_000)
    spec = load_pipeline().by_name["BRIEFING_MD"]
    client = ChatClient(settings, proxy.base_url)
    try:
        body = build_request(spec, "Write the briefing for Acme Corp.", settings)
        completion = client.complete(body, job_id="wire", stage="BRIEFING_MD")
    finally:
        client.close()
    [(cached, reasoning)] = proxy.added["BRIEFING_MD"]
    assert completion.model == "gpt-4o-2024-08-06"
    assert cached > 0 and reasoning > 0
    assert (completion.usage.cached_tokens, completion.usage.reasoning_tokens) == (
        cached,
        reasoning,
    )


def test_a_job_sums_cached_and_reasoning_tokens_over_attempts_and_prices_them(
    sim: SimServer, proxy: _Proxy, make_job: Any, tmp_path: Path
) -> None:
    """ANNEX_JSON's first answer is not JSON, so it is asked again: its two calls' tokens
    are summed, cached ones priced at cached_input; the metrics and the daily ledger count
    them by kind."""
    sim.inject(Fault(stage="ANNEX_JSON", invalid_json=True, times=1))
    prices = tmp_path / "prices.toml"
    prices.write_text('["gpt-4o"]\ninput = 1000.0\ncached_input = 100.0\noutput = 4000.0\n')
    settings = Settings(
        base_url=proxy.base_url,
        model="gpt-4o",
        prices=prices,
        reask_invalid_json=True,  # the second call: the same stage, its tokens summed
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        timeout_ms=5_000,
    )
    with briefd.Pipeline(settings) as pipeline:
        result = pipeline.submit(make_job("cached")).get(timeout=60)
        snapshot = pipeline.metrics()
    assert result.status == "succeeded", result.errors
    assert len(proxy.added["ANNEX_JSON"]) == 2  # the bad answer and the good one
    for stage, added in proxy.added.items():
        u = result.metrics.usage[stage]
        assert u.cached_tokens == sum(c for c, _ in added) > 0
        assert u.reasoning_tokens == sum(r for _, r in added) > 0
        expected = (
            (u.prompt_tokens - u.cached_tokens) * 1000.0
            + u.cached_tokens * 100.0
            + u.completion_tokens * 4000.0
        ) / 1e6
        assert result.cost_usd[stage] == pytest.approx(expected, abs=1e-6)
    usages = result.metrics.usage.values()
    assert snapshot.usage_tokens["cached_tokens"] == sum(u.cached_tokens for u in usages)
    assert snapshot.usage_tokens["reasoning_tokens"] == sum(u.reasoning_tokens for u in usages)
    _daily_ledger_counts_each_kind(result)


def _daily_ledger_counts_each_kind(result: JobResult) -> None:
    ledger = DailyLedger(budget_usd=None)
    ledger.add(result)
    for stage, u in result.metrics.usage.items():
        kinds = {
            kind: ledger.tokens_by_model_stage[(result.model, stage, kind)]
            for kind in ("input", "output", "cached", "reasoning")
        }
        assert kinds == {
            "input": u.prompt_tokens,
            "output": u.completion_tokens,
            "cached": u.cached_tokens,
            "reasoning": u.reasoning_tokens,
        }


# -- a bad price table is bad input wherever briefd starts ---------------------------


@pytest.fixture
def bad_prices(tmp_path: Path) -> Path:
    path = tmp_path / "my-prices.toml"
    path.write_text('["gpt-4o"]\ninput = 2.5\noutptu = 10.0\n')
    return path


def test_pipeline_raises_config_error_naming_file_and_key(sim: SimServer, bad_prices: Path) -> None:
    settings = Settings(base_url=sim.base_url, prices=bad_prices)
    with pytest.raises(briefd.ConfigError, match=r"my-prices\.toml.*'outptu'"):
        briefd.Pipeline(settings)
    with pytest.raises(ConfigError, match=r"my-prices\.toml.*'outptu'"):
        briefd.run({"job_id": "x", "prompts": {}}, settings)
    assert sim.stats().total_requests == 0


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], bad: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "'outptu'" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_briefd_run_with_a_bad_price_table_exits_2_with_one_line(
    sim: SimServer,
    bad_prices: Path,
    tmp_path: Path,
    make_job: Any,
    briefd_cmd: Any,
    child_env: Any,
) -> None:
    """Not "the job's coordinator died" (the table was read lazily, in the coordinator)."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job()))
    proc = subprocess.run(
        briefd_cmd("run", str(job), "--out", str(tmp_path / "out")),
        env=child_env(BRIEFD_BASE_URL=sim.base_url, BRIEFD_PRICES=str(bad_prices)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_exit_2(proc, bad_prices)
    assert not (tmp_path / "out").exists()
    assert sim.stats().total_requests == 0


def test_briefd_serve_with_a_bad_price_table_exits_2_before_touching_its_data_dir(
    sim: SimServer, bad_prices: Path, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    data = tmp_path / "data"
    proc = subprocess.run(
        briefd_cmd("serve"),
        env=child_env(
            BRIEFD_BASE_URL=sim.base_url,
            BRIEFD_PRICES=str(bad_prices),
            BRIEFD_DATA_DIR=str(data),
            BRIEFD_LISTEN="127.0.0.1:0",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_exit_2(proc, bad_prices)
    assert not data.exists()  # no token file, no journal: nothing was started


def test_the_daemon_counts_cached_and_reasoning_tokens_on_metrics(
    proxy: _Proxy, make_job: Any, tmp_path: Path
) -> None:
    """``briefd_llm_tokens_total{kind}`` has cached and reasoning beside input and output,
    each the sum of the job's reported usage; the spend uses cached_input."""
    prices = tmp_path / "prices.toml"
    prices.write_text('["gpt-4o"]\ninput = 1000.0\ncached_input = 100.0\noutput = 4000.0\n')
    daemon = Daemon(tmp_path, proxy.base_url, model="gpt-4o", prices=prices).start()
    try:
        with daemon.client() as client:
            client.submit(make_job("metered"))
            result = client.result("metered", timeout=30)
        resp = HTTP.get(f"{daemon.url}/metrics", headers=daemon.headers(), timeout=5)
    finally:
        daemon.stop()
    assert result.status == "succeeded", result.errors
    tokens: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "briefd_llm_tokens_total":
                tokens[s.labels["kind"]] = tokens.get(s.labels["kind"], 0.0) + s.value
    usages = result.metrics.usage.values()
    assert tokens == {
        "input": sum(u.prompt_tokens for u in usages),
        "output": sum(u.completion_tokens for u in usages),
        "cached": sum(u.cached_tokens for u in usages),
        "reasoning": sum(u.reasoning_tokens for u in usages),
    }
    assert tokens["cached"] > 0 and tokens["reasoning"] > 0
    full_price = sum(u.prompt_tokens * 1000.0 + u.completion_tokens * 4000.0 for u in usages)
    assert result.total_cost_usd < full_price / 1e6  # the cache discount was applied
