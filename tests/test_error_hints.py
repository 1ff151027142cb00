"""A provider's 4xx is shown with its own message, on one line, and a hint chosen from it."""

from __future__ import annotations

from typing import Any

import pytest
from faults.upstream import Exchange, FakeUpstream, respond

import briefd
from briefd.config import Settings
from briefd.llm.call import ChatClient
from briefd.llm.errors import StatusError
from briefd.llm.hints import refused_arguments, status_hint
from briefd.llm.text import one_line
from briefd.messages import ErrorCode

OLD_400_HINT = "the API refused the request; check the prompt size and model limits"


def _openai_error(status: int, message: str, code: str | None = None) -> Any:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}

    def behave(ex: Exchange) -> None:
        respond(ex, status, body)

    return behave


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("openai", ['kind = "compatible"', "only its documented arguments"]),
        ("compatible", ['kind = "openai"', "compatible sends"]),
        ("", ['kind = "openai"', '"compatible"']),
    ],
)
def test_an_unrecognized_argument_names_the_stage_parameter_and_the_kind(
    kind: str, says: list[str]
) -> None:
    hint = status_hint(
        400,
        "Unrecognized request argument supplied: repeat_penalty",
        "invalid_request_error",
        endpoint_kind=kind,
    )
    assert "params.repeat_penalty" in hint and "pipeline file" in hint
    for words in says:
        assert words in hint, hint
    assert hint != OLD_400_HINT


def test_refused_arguments_in_each_provider_wording() -> None:
    assert refused_arguments("Unrecognized request argument supplied: top_k") == ["top_k"]
    assert refused_arguments("Unrecognized request arguments supplied: seed, top_k") == [
        "seed",
        "top_k",
    ]
    assert refused_arguments("Unknown parameter: 'thinking'.") == ["thinking"]
    assert refused_arguments(
        "Unsupported parameter: 'max_tokens' is not supported with this model."
    ) == ["max_tokens"]
    assert refused_arguments("property 'num_keep' is unsupported, please remove it") == ["num_keep"]
    assert refused_arguments("'messages' must contain the word 'json'") == []
    # A documented argument the model refuses is the stage's own field, not params.
    hint = status_hint(400, "Unsupported parameter: 'max_tokens' is not supported with this model.")
    assert "max_tokens" in hint and "params." not in hint


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (400, "you must provide a model parameter", None),
        (404, "The model `gpt-9` does not exist or you do not have access to it.", None),
        (404, "no such thing", "model_not_found"),
        (404, 'model "llama9" not found, try pulling it first', None),
    ],
)
def test_a_missing_or_unknown_model_names_briefd_model_and_the_alias(
    status: int, message: str, code: str | None
) -> None:
    hint = status_hint(status, message, code)
    assert "BRIEFD_MODEL" in hint, hint
    assert "prompt size" not in hint


def test_an_azure_deployment_not_found_names_the_deployment() -> None:
    message = "The API deployment for this resource does not exist."
    hint = status_hint(404, message, "DeploymentNotFound", model="gpt-4o-prod")
    assert "deployment" in hint and "'gpt-4o-prod'" in hint and "BRIEFD_MODEL" in hint


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("This model's maximum context length is 8192 tokens. However, ...", None),
        ("too long", "context_length_exceeded"),
        ("the request exceeds the available context size, try increasing it", None),
    ],
)
def test_a_context_length_error_names_the_prompt_size(message: str, code: str | None) -> None:
    hint = status_hint(400, message, code, prompt_chars=40_000)
    assert "40000 characters" in hint and "10000 tokens" in hint and "max_tokens" in hint


def test_401_and_403_name_the_key_variable() -> None:
    assert status_hint(401, "Incorrect API key provided") == "check BRIEFD_API_KEY"
    assert "OPENAI_API_KEY" in status_hint(401, "no", key_env="OPENAI_API_KEY")
    assert status_hint(403, "forbidden", key_env="AZURE_OPENAI_API_KEY").startswith(
        "check AZURE_OPENAI_API_KEY"
    )


def test_other_statuses_keep_their_hints() -> None:
    assert status_hint(400, "something else entirely") == OLD_400_HINT
    assert "BRIEFD_BASE_URL" in status_hint(404, "Not Found")
    assert "rate limit" in status_hint(429, "slow down")
    assert "billing" in status_hint(429, "quota", "insufficient_quota")
    assert "retried automatically" in status_hint(503, "busy")


def test_line_breaks_in_a_provider_message_become_spaces() -> None:
    """A multi-line message reads as one line: no literal \\n, no raw break; other
    control characters stay escaped."""
    shown = one_line("first line\n  second line\r\n\r\nthird\tfourth\u2028fifth \x1b[2J")
    assert shown == "first line second line third fourth fifth \\u001b[2J"


def test_the_client_maps_a_strict_servers_400_with_its_message_and_kind() -> None:
    """Over the wire: the provider's message (its line breaks as spaces) and a hint naming
    the parameter and BRIEFD_ENDPOINT_KIND's kind."""
    with FakeUpstream() as up:
        up.on(
            "*",
            _openai_error(
                400, "Unrecognized request argument supplied: repeat_penalty\n(see docs)"
            ),
        )
        settings = Settings(base_url=up.base_url, endpoint_kind="openai")
        client = ChatClient(settings, up.base_url)
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(StatusError) as caught:
            client.complete(body, job_id="j", stage="BRIEFING_MD")
    err = caught.value
    assert err.message == (
        "HTTP 400: Unrecognized request argument supplied: repeat_penalty (see docs)"
    )
    assert "params.repeat_penalty" in err.hint and 'kind = "compatible"' in err.hint
    assert not err.retryable


def test_the_client_names_the_prompt_size_of_a_request_too_long() -> None:
    with FakeUpstream() as up:
        up.on("*", _openai_error(400, "too long", "context_length_exceeded"))
        client = ChatClient(Settings(base_url=up.base_url), up.base_url)
        body = {
            "messages": [
                {"role": "system", "content": "s" * 100},
                {"role": "user", "content": "u" * 300},
            ]
        }
        with pytest.raises(StatusError) as caught:
            client.complete(body, job_id="j", stage="S")
    assert "400 characters" in caught.value.hint


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (400, "you must provide a model parameter", None),
        (404, "The model `x` does not exist", "model_not_found"),
    ],
)
def test_a_400_or_404_is_not_retried(
    make_job: Any, status: int, message: str, code: str | None
) -> None:
    """One call per stage, whatever BRIEFD_MAX_RETRIES says; the job's errors carry the
    provider's message and the model hint."""
    with FakeUpstream() as up:
        up.on("BRIEFING_MD", _openai_error(status, message, code))
        settings = Settings(base_url=up.base_url, max_retries=3, backoff_initial_s=0.01)
        result = briefd.run(make_job("no-retry"), settings)
        assert up.count("no-retry", "BRIEFING_MD") == 1
    (error,) = [e for e in result.errors if e.stage == "BRIEFING_MD"]
    assert error.code is ErrorCode.HTTP_ERROR
    assert message in error.message
    assert "BRIEFD_MODEL" in error.hint
