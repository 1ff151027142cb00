"""Endpoints and model aliases: where each stage's call may go, and in what order.

A team names its providers once (``BRIEFD_ENDPOINTS``, a TOML file; docs/providers.md)::

    [[endpoints]]
    name = "openai"
    kind = "openai"                      # openai | azure | compatible
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"       # the key itself never sits in the file

    [[models]]
    name = "strong"
    use = ["openai:gpt-4o", "azure-eu:gpt-4o-prod"]   # failover order

and a stage, a job or ``BRIEFD_MODEL`` names an alias. Without the file, the
single endpoint of ``BRIEFD_BASE_URL`` (or the embedded model) is the endpoint
``default`` and ``BRIEFD_MODEL`` its model. Everything is checked here, once,
with one line per mistake, so a bad file never reaches a call.

The kind decides what is sent (:mod:`briefd.llm.kinds`): the OpenAI API refuses
any argument it does not document (``400 Unrecognized request argument``), so
an ``openai`` or ``azure`` endpoint gets only those, while a ``compatible``
server (vLLM, Ollama, llama.cpp) also gets a pipeline's extra ``params``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from briefd.config.errors import ConfigError, read_toml

Kind = Literal["openai", "azure", "compatible", "embedded"]
KINDS: tuple[str, ...] = ("openai", "azure", "compatible")
"""The kinds a user may write; ``embedded`` is briefd's own local model."""
DEFAULT_ENDPOINT = "default"
DEFAULT_ALIAS = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENDPOINT_KEYS = {
    "name", "kind", "base_url", "api_key_env", "api_version", "headers",
    "max_concurrent", "rpm", "tpm", "response_format", "stream",
}  # fmt: skip
_MODEL_KEYS = {"name", "use"}
_RESPONSE_FORMATS = ("json_schema", "json_object", "none")
_SECRET_HEADERS = {"authorization", "api-key", "x-api-key"}


@dataclass(frozen=True)
class EndpointSpec:
    """One server briefd may call, and how to speak to it. Holds no secret: only
    the name of the variable the key is read from (``api_key_env``), or, for the
    single ``BRIEFD_BASE_URL`` endpoint, nothing (the key is ``BRIEFD_API_KEY``)."""

    name: str
    kind: Kind
    base_url: str
    api_key_env: str | None = None
    api_version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    max_concurrent: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    response_format: str | None = None
    stream: bool = True  # false: never ask this server to stream (BRIEFD_STREAM is the default)

    @property
    def accepts_extra_params(self) -> bool:
        """Whether a pipeline's extra ``params`` may be sent (servers that ignore unknowns)."""
        return self.kind in ("compatible", "embedded")


@dataclass(frozen=True)
class Route:
    """One entry of an alias: this endpoint, this model (Azure: the deployment)."""

    endpoint: str
    model: str

    def __str__(self) -> str:
        return f"{self.endpoint}:{self.model}"


@dataclass(frozen=True)
class EndpointsFile:
    """What ``BRIEFD_ENDPOINTS`` declares: endpoints by name, aliases by name."""

    endpoints: Mapping[str, EndpointSpec]
    aliases: Mapping[str, tuple[Route, ...]]
    source: str


def load_endpoints(path: Path, environ: Mapping[str, str] | None = None) -> EndpointsFile:
    """Read and check an endpoints file; :class:`ConfigError` lists every mistake, one a line."""
    where = f"endpoints file {path}"
    data = read_toml(path, where)
    return parse_endpoints(data, where, os.environ if environ is None else environ)


def parse_endpoints(data: dict[str, Any], where: str, environ: Mapping[str, str]) -> EndpointsFile:
    """The checked contents of an endpoints file (``where`` names it in messages)."""
    errors: list[str] = []
    unknown = sorted(set(data) - {"endpoints", "models"})
    errors += [
        f"{where}: unknown table {k!r} (expected [[endpoints]] and [[models]])" for k in unknown
    ]
    endpoints: dict[str, EndpointSpec] = {}
    raw_endpoints = data.get("endpoints", [])
    if not isinstance(raw_endpoints, list) or not raw_endpoints:
        errors.append(f"{where}: needs at least one [[endpoints]] table")
        raw_endpoints = []
    for i, entry in enumerate(raw_endpoints):
        spec = _endpoint(entry, f"{where}: endpoints[{i}]", environ, errors)
        if spec is None:
            continue
        if spec.name in endpoints:
            errors.append(f"{where}: endpoint {spec.name!r} is declared twice")
        endpoints[spec.name] = spec
    aliases: dict[str, tuple[Route, ...]] = {}
    raw_models = data.get("models", [])
    if not isinstance(raw_models, list):
        errors.append(f"{where}: models must be [[models]] tables")
        raw_models = []
    for i, entry in enumerate(raw_models):
        found = _alias(entry, f"{where}: models[{i}]", endpoints, errors)
        if found is None:
            continue
        name, routes = found
        if name in aliases:
            errors.append(f"{where}: model alias {name!r} is declared twice")
        aliases[name] = routes
    if errors:
        raise ConfigError("\n".join(errors))
    return EndpointsFile(endpoints, aliases, where)


def _named(
    entry: dict[str, Any], at: str, what: str, keys: set[str], errors: list[str]
) -> tuple[str | None, str]:
    """A table's ``name`` (None when bad, said in ``errors``), the place to name in later
    messages (``endpoint 'x'``), and a line per unknown key."""
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append(f"{at}: name: required, letters, digits, '_', '-', '.' (got {name!r})")
        named = None
    else:
        named, at = name, f"{at.rsplit(':', 1)[0]}: {what} {name!r}"
    errors += [f"{at}: unknown key {k!r}" for k in sorted(set(entry) - keys)]
    return named, at


def _endpoint(
    entry: object, at: str, environ: Mapping[str, str], errors: list[str]
) -> EndpointSpec | None:
    if not isinstance(entry, dict):
        errors.append(f"{at}: must be a table")
        return None
    before = len(errors)
    name, at = _named(entry, at, "endpoint", _ENDPOINT_KEYS, errors)
    if name is None:
        name = f"#{at}"
    kind = entry.get("kind")
    if kind not in KINDS:
        errors.append(f"{at}: kind: must be one of {', '.join(KINDS)} (got {kind!r})")
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        errors.append(f"{at}: base_url: must be an http(s) URL")
    elif "?" in base_url:
        errors.append(f"{at}: base_url: no query string (Azure's api-version is api_version)")
    key_env = entry.get("api_key_env")
    if key_env is not None:
        if not isinstance(key_env, str) or not key_env:
            errors.append(f"{at}: api_key_env: the name of an environment variable")
        elif not environ.get(key_env):
            errors.append(f"{at}: api_key_env: the variable {key_env} is not set")
    elif kind == "azure":
        errors.append(f"{at}: api_key_env: required for kind azure")
    api_version = entry.get("api_version")
    if kind == "azure" and not (isinstance(api_version, str) and api_version):
        errors.append(f"{at}: api_version: required for kind azure (e.g. 2024-10-21)")
    elif api_version is not None and kind != "azure":
        errors.append(f"{at}: api_version: only for kind azure")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        errors.append(f"{at}: headers: a table of strings")
        headers = {}
    for key in headers:
        if key.lower() in _SECRET_HEADERS:
            errors.append(f"{at}: headers: {key} would put a secret in the file; use api_key_env")
    max_concurrent = entry.get("max_concurrent")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or max_concurrent < 1
    ):
        errors.append(f"{at}: max_concurrent: a whole number >= 1")
    for budget in ("rpm", "tpm"):
        value = entry.get(budget)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            errors.append(f"{at}: {budget}: a number > 0")
    response_format = entry.get("response_format")
    if response_format is not None and response_format not in _RESPONSE_FORMATS:
        errors.append(f"{at}: response_format: one of {', '.join(_RESPONSE_FORMATS)}")
    stream = entry.get("stream", True)
    if not isinstance(stream, bool):
        errors.append(f"{at}: stream: true or false")
    if len(errors) > before:
        return None
    rpm, tpm = entry.get("rpm"), entry.get("tpm")
    return EndpointSpec(
        name=name,
        kind=cast(Kind, kind),
        base_url=cast(str, base_url).rstrip("/"),
        api_key_env=key_env,
        api_version=api_version,
        headers=dict(headers),
        max_concurrent=max_concurrent,
        rpm=float(rpm) if rpm is not None else None,
        tpm=float(tpm) if tpm is not None else None,
        response_format=response_format,
        stream=bool(stream),
    )


def _alias(
    entry: object, at: str, endpoints: Mapping[str, EndpointSpec], errors: list[str]
) -> tuple[str, tuple[Route, ...]] | None:
    if not isinstance(entry, dict):
        errors.append(f"{at}: must be a table")
        return None
    before = len(errors)
    name, at = _named(entry, at, "model", _MODEL_KEYS, errors)
    if name is None:
        return None
    use = entry.get("use")
    if not isinstance(use, list) or not use or not all(isinstance(u, str) for u in use):
        errors.append(f'{at}: use: a list of "endpoint:model" strings, in failover order')
        return None
    routes = []
    for item in use:
        endpoint, sep, model = item.partition(":")
        if not sep or not model:
            errors.append(f'{at}: use: {item!r} is not "endpoint:model"')
        elif endpoint not in endpoints:
            known = ", ".join(sorted(endpoints)) or "none"
            errors.append(f"{at}: use: unknown endpoint {endpoint!r} (declared: {known})")
        else:
            routes.append(Route(endpoint, model))
    if len(set(routes)) != len(routes):
        errors.append(f"{at}: use: an entry is listed twice")
    if len(errors) > before:
        return None
    return name, tuple(routes)
