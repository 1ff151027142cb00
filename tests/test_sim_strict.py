"""The simulator's strict mode: OpenAI's real contract, over real HTTP on 127.0.0.1.

Every refusal is checked in OpenAI's exact error shape (``{"error": {"message", "type",
"param", "code"}}``) or Azure's (``{"error": {"code", "message"}}``), with its status.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator

from briefd.config import Settings, load_pipeline
from briefd.limits.headers import parse_rate_limits
from briefd.llm.call import build_request
from briefd.sim.catalog import CACHE_STEP_TOKENS, REASONING_PER_OUTPUT
from briefd.sim.cli import main
from briefd.sim.openai_spec import CHAT_ARGUMENTS, MODEL_REQUIRED
from briefd.sim.ratelimit import SimRateLimits, format_duration
from briefd.sim.server import Fault, SimProfile, SimServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "northwind-briefing.json"
RATE_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


@pytest.fixture
def strict() -> Iterator[SimServer]:
    """A strict server with zero latency and the default models."""
    with SimServer(SimProfile(scale=0.0), strict=True) as server:
        yield server


def post(server: SimServer, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{server.base_url}/chat/completions", json=body, headers=headers or {}, timeout=5
    )


def minimal(**extra: Any) -> dict[str, Any]:
    """The smallest body OpenAI accepts."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}], **extra}


def openai_error(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


# -- unknown arguments ------------------------------------------------------------------


def test_unknown_top_level_arguments_are_refused_as_openai_words_it(strict: SimServer) -> None:
    """top_k and repeat_penalty are not OpenAI arguments; seed is (deprecated but valid)."""
    one = post(strict, minimal(top_k=40))
    two = post(strict, minimal(top_k=40, repeat_penalty=1.3))
    assert one.status_code == two.status_code == 400
    assert one.json() == openai_error("Unrecognized request argument supplied: top_k")
    assert two.json() == openai_error(
        "Unrecognized request arguments supplied: top_k, repeat_penalty"
    )
    assert "seed" in CHAT_ARGUMENTS and "top_k" not in CHAT_ARGUMENTS
    assert post(strict, minimal(seed=42)).status_code == 200


def test_builtin_markdown_stages_with_repeat_penalty_are_refused(strict: SimServer) -> None:
    """What briefd built for the built-in Markdown stages before issue 17 is refused.

    ``config/pipeline.toml`` gave BRIEFING_MD and PLAYS_MD ``params = {repeat_penalty = 1.3,
    seed = 42}`` (llama.cpp's extras, now the embedded model's own): OpenAI refuses the
    body with this exact message, so both stages failed. The same stage without the
    extra is accepted (``seed`` is a documented argument).
    """
    settings = Settings(base_url=strict.base_url, model="gpt-4o")
    pipeline = load_pipeline()
    for name in ("BRIEFING_MD", "PLAYS_MD"):
        stage = pipeline.by_name[name]
        before = stage.model_copy(update={"params": {"repeat_penalty": 1.3, "seed": 42}})
        body = build_request(before, "Write it.", settings)
        resp = post(strict, body)
        assert resp.status_code == 400, name
        assert resp.json() == openai_error("Unrecognized request argument supplied: repeat_penalty")
        without = {k: v for k, v in body.items() if k != "repeat_penalty"}
        assert post(strict, without).status_code == 200, name


def test_unknown_keys_inside_response_format_are_refused(strict: SimServer) -> None:
    """llama.cpp's ``{"type": "json_object", "schema": ...}`` is not OpenAI's shape."""
    llama = post(
        strict,
        minimal(
            messages=[{"role": "user", "content": "Answer in JSON."}],
            response_format={"type": "json_object", "schema": {"type": "object"}},
        ),
    )
    assert llama.status_code == 400
    assert llama.json() == openai_error(
        "Unknown parameter: 'response_format.schema'.",
        "response_format.schema",
        "unknown_parameter",
    )
    inner = post(
        strict,
        minimal(response_format={"type": "json_schema", "json_schema": {"name": "x", "foo": 1}}),
    )
    assert inner.json()["error"]["param"] == "response_format.json_schema.foo"
    assert inner.json()["error"]["code"] == "unknown_parameter"


# -- the model --------------------------------------------------------------------------


def test_model_is_required_and_must_be_served(strict: SimServer) -> None:
    """No model: 400 as OpenAI words it. An unknown one: 404 model_not_found."""
    body = minimal()
    del body["model"]
    missing = post(strict, body)
    unknown = post(strict, minimal(model="gpt-9"))
    assert missing.status_code == 400
    assert missing.json() == openai_error("you must provide a model parameter")
    assert unknown.status_code == 404
    assert unknown.json() == openai_error(
        "The model `gpt-9` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def test_a_valid_body_is_answered_by_the_dated_model_with_usage_details(
    strict: SimServer,
) -> None:
    """The answer names the snapshot; usage carries cached and reasoning token details."""
    resp = post(strict, minimal(temperature=0.3, max_tokens=50, seed=1, store=False))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "gpt-4o-2024-08-06"
    assert post(strict, minimal(model="gpt-4o-mini")).json()["model"] == "gpt-4o-mini-2024-07-18"
    assert post(strict, minimal(model="gpt-4o-2024-08-06")).json()["model"] == body["model"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == 2
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_reasoning_models_report_reasoning_tokens_and_refuse_max_tokens(
    strict: SimServer,
) -> None:
    """o4-mini counts hidden reasoning in completion_tokens; max_tokens is refused for it."""
    body = post(strict, minimal(model="o4-mini", max_completion_tokens=500)).json()
    content_words = len(body["choices"][0]["message"]["content"].split())
    details = body["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] == content_words * REASONING_PER_OUTPUT
    assert body["usage"]["completion_tokens"] == content_words + details["reasoning_tokens"]
    refused = post(strict, minimal(model="o4-mini", max_tokens=500))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_parameter"
    assert refused.json()["error"]["param"] == "max_tokens"
    hot = post(strict, minimal(model="o4-mini", temperature=0.3)).json()["error"]
    assert (hot["param"], hot["code"]) == ("temperature", "unsupported_value")
    effort = post(strict, minimal(model="o4-mini", reasoning_effort="low"))
    assert effort.status_code == 200
    not_reasoning = post(strict, minimal(reasoning_effort="low")).json()["error"]
    assert (not_reasoning["param"], not_reasoning["code"]) == (
        "reasoning_effort",
        "unsupported_parameter",
    )


def test_cached_tokens_follow_the_prompt_prefix(strict: SimServer) -> None:
    """From 1,024 prompt tokens, a prefix seen before is cached in 128-token steps."""
    long = " ".join(f"w{i}" for i in range(1100))
    first = post(strict, minimal(messages=[{"role": "user", "content": long}])).json()
    again = post(strict, minimal(messages=[{"role": "user", "content": long + " more"}])).json()
    other_model = post(
        strict, minimal(model="gpt-4o-mini", messages=[{"role": "user", "content": long}])
    ).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (1100 // CACHE_STEP_TOKENS) * CACHE_STEP_TOKENS == 1024
    assert other_model["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_cached_fraction_reports_a_fixed_share() -> None:
    """``cached_fraction`` makes every prompt's cached share deterministic and non-zero."""
    with SimServer(SimProfile(scale=0.0), strict=True, cached_fraction=0.5) as server:
        msg = {"role": "user", "content": "one two three four five six seven eight"}
        usage = post(server, minimal(messages=[msg])).json()["usage"]
    assert usage["prompt_tokens"] == 8
    assert usage["prompt_tokens_details"]["cached_tokens"] == 4


# -- messages and arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "param", "code"),
    [
        ({"messages": []}, 400, "messages", "empty_array"),
        ({"messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user"}]}, 400, "messages[0].content",
         "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": "x", "foo": 1}]}, 400, "messages[0].foo",
         "unknown_parameter"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}, 400,
         "messages[0].content[0].type", "invalid_value"),
        ({"temperature": 3}, 400, "temperature", "integer_above_max_value"),
        ({"temperature": "hot"}, 400, "temperature", "invalid_type"),
        ({"max_tokens": 1.5}, 400, "max_tokens", "invalid_type"),
        ({"reasoning_effort": "extreme"}, 400, "reasoning_effort", "invalid_value"),
    ],
)  # fmt: skip
def test_messages_and_arguments_are_validated_as_the_spec_says(
    strict: SimServer, change: dict[str, Any], status: int, param: str, code: str
) -> None:
    """Roles, required fields, content parts, types, bounds and enums from the OpenAPI document."""
    resp = post(strict, {**minimal(), **change})
    assert resp.status_code == status
    error = resp.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert set(error) == {"message", "type", "param", "code"}


def test_role_refusal_lists_the_roles_as_openai_does(strict: SimServer) -> None:
    resp = post(strict, minimal(messages=[{"role": "bot", "content": "x"}]))
    assert resp.json()["error"]["message"] == (
        "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', "
        "'function', 'tool', and 'developer'."
    )


# -- response_format --------------------------------------------------------------------


def test_json_object_needs_the_word_json_in_the_messages(strict: SimServer) -> None:
    """OpenAI's rule for JSON mode; with it, the content is the JSON alone."""
    fmt = {"type": "json_object"}
    refused = post(strict, minimal(response_format=fmt))
    assert refused.status_code == 400
    assert refused.json() == openai_error(
        "'messages' must contain the word 'json' in some form, to use 'response_format' of "
        "type 'json_object'.",
        param="messages",
    )
    ok = post(
        strict,
        minimal(messages=[{"role": "system", "content": "Answer in JSON."}], response_format=fmt),
    )
    assert ok.status_code == 200
    assert isinstance(json.loads(ok.json()["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize("name", ["has space", "", "x" * 65, "dots.not.allowed"])
def test_json_schema_name_must_match_the_pattern(strict: SimServer, name: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": {"type": "object"}}}
    resp = post(strict, minimal(response_format=fmt))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "response_format.json_schema.name"


def test_json_schema_needs_a_name(strict: SimServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    resp = post(strict, minimal(response_format=fmt))
    assert resp.json() == openai_error(
        "Missing required parameter: 'response_format.json_schema.name'.",
        "response_format.json_schema.name",
        "missing_required_parameter",
    )


STRICT_OK = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "owner": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "vendors": {"type": "array", "items": {"$ref": "#/$defs/vendor"}, "maxItems": 1},
    },
    "required": ["summary", "score", "owner", "vendors"],
    "additionalProperties": False,
    "$defs": {
        "vendor": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "tier": {"enum": ["a", "b"]}},
            "required": ["name", "tier"],
            "additionalProperties": False,
        }
    },
}


def _strict_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "strict": True, "schema": schema}}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {**STRICT_OK, "additionalProperties": True},
            "In context=(), 'additionalProperties' is required to be supplied and to be false.",
        ),
        (
            {**STRICT_OK, "required": ["summary", "score", "owner"]},
            "In context=(), 'required' is required to be supplied and to be an array including "
            "every key in properties. Missing 'vendors'.",
        ),
        (
            {**STRICT_OK, "$defs": {"vendor": {"type": "object", "properties": {}}}},
            "In context=('$defs', 'vendor'), 'additionalProperties' is required to be supplied "
            "and to be false.",
        ),
        (
            {**STRICT_OK, "allOf": [{"type": "object"}]},
            "In context=(), 'allOf' is not permitted.",
        ),
        ({"type": "array", "items": {"type": "string"}}, None),
    ],
)
def test_strict_json_schema_follows_structured_output_rules(
    strict: SimServer, schema: dict[str, Any], message: str | None
) -> None:
    """``strict: true`` refuses schemas OpenAI cannot enforce, naming where."""
    resp = post(strict, minimal(response_format=_strict_format(schema)))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "response_format" and error["code"] is None
    not_object = "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."
    expected = message or not_object
    assert error["message"] == f"Invalid schema for response_format 'out': {expected}"


def test_strict_json_schema_answer_is_bare_json_valid_for_the_schema(strict: SimServer) -> None:
    resp = post(strict, minimal(response_format=_strict_format(STRICT_OK)))
    assert resp.status_code == 200, resp.text
    doc = json.loads(resp.json()["choices"][0]["message"]["content"])
    assert not list(Draft202012Validator(STRICT_OK).iter_errors(doc))


def test_json_stages_get_answers_valid_for_the_example_schemas(strict: SimServer) -> None:
    """The example job's schemas, asked for as briefd asks (json_schema, not strict)."""
    settings = Settings(base_url=strict.base_url, model="gpt-4o-mini", stream=False)
    pipeline = load_pipeline()
    schemas = json.loads(EXAMPLE.read_text())["schemas"]
    for name, schema in schemas.items():
        stage = pipeline.by_name[name].model_copy(update={"schema_": schema})
        body = build_request(stage, "List the facts.", settings)
        resp = post(strict, body, {"X-Briefd-Stage": name})
        assert resp.status_code == 200, resp.text
        doc = json.loads(resp.json()["choices"][0]["message"]["content"])
        assert not list(Draft202012Validator(schema).iter_errors(doc)), name


# -- keys ------------------------------------------------------------------------------


def test_a_configured_key_is_required_and_never_echoed() -> None:
    with SimServer(SimProfile(scale=0.0), strict=True, api_key="sk-right-key") as server:
        none = post(server, minimal())
        wrong = post(server, minimal(), {"Authorization": "Bearer sk-wrong-key-123"})
        right = post(server, minimal(), {"Authorization": "Bearer sk-right-key"})
        models = requests.get(f"{server.base_url}/models", timeout=5)
    assert none.status_code == wrong.status_code == models.status_code == 401
    assert none.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert wrong.json() == openai_error(
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )
    assert "sk-wrong" not in wrong.text and "sk-right" not in wrong.text
    assert right.status_code == 200


# -- Azure OpenAI -----------------------------------------------------------------------


@pytest.fixture
def azure() -> Iterator[SimServer]:
    with SimServer(
        SimProfile(scale=0.0),
        strict=True,
        api_key="azure-key",
        deployments={"gpt-4o-prod": "gpt-4o"},
    ) as server:
        yield server


def azure_post(
    server: SimServer,
    deployment: str = "gpt-4o-prod",
    query: str = "?api-version=2024-10-21",
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> requests.Response:
    url = f"{server.azure_endpoint}/openai/deployments/{deployment}/chat/completions{query}"
    payload = body if body is not None else {"messages": [{"role": "user", "content": "Hi."}]}
    sent = {"api-key": "azure-key"} if headers is None else headers
    return requests.post(url, json=payload, headers=sent, timeout=5)


def test_azure_deployment_route_with_api_key_is_answered(azure: SimServer) -> None:
    """No model in the body: the deployment names it, and the answer names its snapshot."""
    resp = azure_post(azure)
    preview = azure_post(azure, query="?api-version=2025-01-01-preview")
    assert resp.status_code == preview.status_code == 200, resp.text
    assert resp.json()["model"] == "gpt-4o-2024-08-06"
    assert set(RATE_HEADERS) <= {k.lower() for k in resp.headers}


def test_azure_refusals_have_azure_shapes(azure: SimServer) -> None:
    """Bearer is not Azure's key header; api-version and the deployment are checked."""
    bearer = azure_post(azure, headers={"Authorization": "Bearer azure-key"})
    no_key = azure_post(azure, headers={})
    no_version = azure_post(azure, query="")
    bad_version = azure_post(azure, query="?api-version=latest")
    no_deployment = azure_post(azure, deployment="gpt-5-prod")
    extra = {"messages": [{"role": "user", "content": "x"}], "top_k": 1}
    strict_body = azure_post(azure, body=extra)
    assert bearer.status_code == no_key.status_code == 401
    assert bearer.json()["error"]["code"] == "401"
    assert bearer.json()["error"]["message"].startswith("Access denied due to invalid subscription")
    assert no_key.json()["error"]["message"].startswith("Access denied due to missing subscription")
    assert no_version.status_code == 404
    assert no_version.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert bad_version.status_code == 400
    assert no_deployment.status_code == 404
    assert no_deployment.json()["error"]["code"] == "DeploymentNotFound"
    assert strict_body.status_code == 400
    assert strict_body.json()["error"]["message"] == "Unrecognized request argument supplied: top_k"


# -- models and rate limits -------------------------------------------------------------


def test_models_are_listed_in_openais_list_format(strict: SimServer) -> None:
    listed = requests.get(f"{strict.base_url}/models", timeout=5).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o4-mini"]
    for model in listed["data"]:
        assert set(MODEL_REQUIRED) <= set(model) and model["object"] == "model"
    with SimServer(SimProfile(scale=0.0), strict=True, models=["only-one"]) as server:
        one = requests.get(f"{server.base_url}/models", timeout=5).json()
        assert [m["id"] for m in one["data"]] == ["only-one"]
        assert post(server, minimal(model="only-one")).json()["model"] == "only-one"


def test_every_strict_answer_carries_rate_limit_headers_briefd_can_parse(
    strict: SimServer,
) -> None:
    ok = post(strict, minimal(max_tokens=100))
    refused = post(strict, minimal(top_k=1))
    for resp in (ok, refused):
        assert set(RATE_HEADERS) <= {k.lower() for k in resp.headers}
    limits = parse_rate_limits(ok.headers, maximum=60.0)
    assert limits.remaining_requests == int(ok.headers["x-ratelimit-limit-requests"]) - 1
    assert limits.remaining_tokens is not None and limits.remaining_tokens < int(
        ok.headers["x-ratelimit-limit-tokens"]
    )
    assert limits.reset_requests_s is not None and 0 < limits.reset_requests_s <= 1.0
    assert ok.headers["x-request-id"].startswith("req_")


def test_lenient_mode_sends_no_rate_headers_and_ignores_extras() -> None:
    """Today's answers, unchanged: existing tests and benchmarks see no pacing headers."""
    with SimServer(SimProfile(scale=0.0)) as server:
        resp = post(server, {"messages": [{"role": "user", "content": "x"}], "top_k": 4})
    assert resp.status_code == 200
    assert not {k.lower() for k in resp.headers} & set(RATE_HEADERS)
    assert resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_an_enforced_request_rate_answers_429_with_openais_headers() -> None:
    """--rps 10 --burst 2: the third request at once is refused with a wait of ~100 ms."""
    with SimServer(SimProfile(scale=0.0), rps=10, burst=2) as server:
        answers = [post(server, {"messages": [{"role": "user", "content": "x"}]}) for _ in range(3)]
        assert server.wait_until_idle(5.0)
        assert server.stats().by_status == {200: 2, 429: 1}
    assert [a.status_code for a in answers[:2]] == [200, 200]
    refused = answers[2]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert error["message"].startswith("Rate limit reached for briefd-sim")
    limits = parse_rate_limits(refused.headers, maximum=60.0)
    assert limits.remaining_requests == 0
    assert limits.retry_after_s is not None and 0 < limits.retry_after_s <= 0.1
    assert limits.reset_requests_s is not None and 0 < limits.reset_requests_s <= 0.2
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert int(refused.headers["retry-after"]) >= 1


def test_token_buckets_refill_at_their_rate() -> None:
    """A fake clock: limit/remaining/reset describe the bucket and imply its rate."""
    now = [100.0]
    limits = SimRateLimits(rps=10, burst=2, tpm=600, clock=lambda: now[0])
    assert limits.admit(5).allowed and limits.admit(5).allowed
    third = limits.admit(5)
    assert not third.allowed and third.exhausted == "requests"
    assert third.retry_after_s == pytest.approx(0.1)
    assert third.headers["retry-after-ms"] == "100"
    now[0] += 0.1
    fourth = limits.admit(5)
    assert fourth.allowed
    assert fourth.headers["x-ratelimit-remaining-requests"] == "0"
    assert fourth.headers["x-ratelimit-reset-requests"] == "200ms"
    assert fourth.headers["x-ratelimit-remaining-tokens"] == "586"  # 600 - 15 + 1 refilled
    assert fourth.headers["x-ratelimit-reset-tokens"] == "1.4s"
    now[0] += 1.0
    big = limits.admit(700)  # the token bucket (600, 10/s) is not full yet
    assert not big.allowed and big.exhausted == "tokens"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (0.12, "120ms"), (1.0, "1s"), (17.5, "17.5s"), (360.0, "6m0s"), (3723, "1h2m3s")],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- a dead endpoint, and the command line -----------------------------------------------


def test_a_server_answering_503_to_everything() -> None:
    """The failover tests' dead endpoint: strict, and every chat request is a 503."""
    dead = SimProfile(scale=0.0, faults=[Fault(status=503, times=None)])
    with SimServer(dead, strict=True) as server:
        answers = [post(server, minimal()).status_code for _ in range(3)]
    assert answers == [503, 503, 503]


def test_cli_strict_flags(tmp_path: Path, briefd_cmd: Any, child_env: Any) -> None:
    """``briefd sim --strict`` with a key from the environment, limits and a dead mode."""
    proc = subprocess.Popen(
        briefd_cmd(
            "sim", "--port", "0", "--scale", "0", "--strict", "--model", "gpt-4o",
            "--deployment", "prod=gpt-4o", "--api-key-env", "SIM_KEY", "--rps", "50",
            "--burst", "5", "--cached-fraction", "0.25", "--fail-status", "503",
        ),
        env=child_env(SIM_KEY="k-123"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "strict" in line
        url = line.strip().rsplit(" ", 1)[-1]
        auth = {"Authorization": "Bearer k-123"}
        listed = requests.get(url + "/models", headers=auth, timeout=5).json()
        assert [m["id"] for m in listed["data"]] == ["gpt-4o"]
        unknown = requests.post(
            url + "/chat/completions", json=minimal(top_k=1), headers=auth, timeout=5
        )
        dead = requests.post(url + "/chat/completions", json=minimal(), headers=auth, timeout=5)
        assert unknown.status_code == 400 and dead.status_code == 503
        assert dead.headers["x-ratelimit-limit-requests"] == "5"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--burst", "2"], "--burst: needs --rps"),
        (["--api-key-env", "SURELY_UNSET_SIM_KEY"], "SURELY_UNSET_SIM_KEY is not set"),
        (["--deployment", "prod"], "expected NAME=MODEL"),
        (["--strict", "--deployment", "prod=gpt-9"], "not served"),
        (["--cached-fraction", "2"], "--cached-fraction"),
        (["--fail-status", "200"], "--fail-status"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--port", "0", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and err.startswith("briefd sim: error:")


def test_answer_headers_do_not_leak_into_the_next_request_on_a_connection(
    strict: SimServer,
) -> None:
    """One handler serves a keep-alive connection: a stats answer carries no chat headers."""
    with requests.Session() as session:
        chat = session.post(f"{strict.base_url}/chat/completions", json=minimal(), timeout=5)
        stats = session.get(f"{strict.base_url.removesuffix('/v1')}/_sim/stats", timeout=5)
    assert "x-request-id" in chat.headers
    assert stats.status_code == 200 and "x-request-id" not in stats.headers


def test_stream_true_is_answered_as_server_sent_events(strict: SimServer) -> None:
    """Chunks carry the content in pieces; include_usage adds a usage chunk before [DONE]."""
    plain = post(strict, minimal()).json()
    resp = post(strict, minimal(stream=True, stream_options={"include_usage": True}))
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in resp.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 2
    refused = post(strict, minimal(stream_options={"include_usage": True}))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream_options"
