"""Where the stages' API lives: the endpoints file, one configured server, or the embedded model.

With ``BRIEFD_ENDPOINTS`` briefd reads its endpoints and model aliases
(:mod:`briefd.config.endpoints`). With ``BRIEFD_BASE_URL`` it talks to that one
server (of kind ``BRIEFD_ENDPOINT_KIND``, ``openai`` unless said otherwise).
Without either, it starts the embedded model (llama.cpp's
OpenAI-compatible server, through xllamacpp, with SmolLM2-135M) on 127.0.0.1 and stops it when
done, the way an application uses SQLite before it needs PostgreSQL.

The model is never missing: with none configured, the server's ``/models`` is
asked, and its only model is used (and said); otherwise the start stops, naming
``BRIEFD_MODEL`` and listing what the server offers, before any call is paid for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests
from loguru import logger

from briefd.config import ConfigError, Settings, StageSpec
from briefd.config.endpoints import (
    DEFAULT_ALIAS,
    DEFAULT_ENDPOINT,
    EndpointSpec,
    Kind,
    load_endpoints,
)
from briefd.llm.kinds import dropped_params
from briefd.llm.routing import Breakers, Routing
from briefd.llm.text import one_line
from briefd.redaction import register_secret

_LISTED = 5  # models named in a refusal


@dataclass
class Provider:
    """The endpoints and model aliases the stages call, and what to stop when done."""

    base_url: str
    routing: Routing
    model: str = ""
    response_format: str | None = None
    _server: Any = field(default=None, repr=False)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def open_provider(settings: Settings, stages: Iterable[StageSpec] = ()) -> Provider:
    """The configured endpoints, or a freshly started local model.

    ``stages`` (the pipeline's) are checked against the endpoints: a parameter an
    endpoint's kind would refuse is said once here, and never sent.
    """
    breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown_s)
    stages = tuple(stages)
    if settings.endpoints is not None:
        provider = _from_file(settings, breakers)
    elif settings.base_url:
        provider = _from_base_url(settings, breakers)
    else:
        return _embedded(settings, breakers)
    for spec in provider.routing.endpoints.values():
        for stage_name, param in dropped_params(stages, spec):
            logger.warning(
                "stage {} param {!r} is not sent to endpoint {} (kind {} takes only the "
                "OpenAI API's documented arguments; kind = 'compatible' sends it)",
                stage_name, param, spec.name, spec.kind,
            )  # fmt: skip
    for stage in stages:
        if stage.model is not None:
            provider.routing.check(stage.model, f"pipeline stage {stage.name}: model")
        else:
            provider.routing.check(None, f"pipeline stage {stage.name} (no model): BRIEFD_MODEL")
    return provider


def _from_file(settings: Settings, breakers: Breakers) -> Provider:
    assert settings.endpoints is not None
    declared = load_endpoints(settings.endpoints)
    keys: dict[str, str | None] = {}
    for spec in declared.endpoints.values():
        keys[spec.name] = _env_key(spec.api_key_env)
    aliases = dict(declared.aliases)
    default = settings.model or (next(iter(aliases)) if len(aliases) == 1 else DEFAULT_ALIAS)
    routing = Routing(
        endpoints=declared.endpoints,
        aliases=aliases,
        default_alias=default,
        keys=keys,
        breakers=breakers,
        declared=True,
    )
    if settings.model:
        routing.check(settings.model, "BRIEFD_MODEL")
    first = next(iter(declared.endpoints.values()))
    logger.info(
        "endpoints from {}: {}; model aliases: {}",
        settings.endpoints,
        ", ".join(f"{e.name} ({e.kind})" for e in declared.endpoints.values()),
        ", ".join(f"{a} = {' > '.join(map(str, r))}" for a, r in aliases.items()) or "none",
    )
    return Provider(base_url=first.base_url, routing=routing, model=default)


def _env_key(name: str | None) -> str | None:
    if not name:
        return None
    value = os.environ.get(name) or None
    if value:
        register_secret(value)
    return value


def _from_base_url(settings: Settings, breakers: Breakers) -> Provider:
    assert settings.base_url is not None
    url = settings.base_url.strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"BRIEFD_BASE_URL: not an http(s) URL: {url!r}")
    kind: Kind = settings.endpoint_kind
    parts = urlsplit(url)
    api_version = settings.api_version
    if parts.query:
        query = parse_qs(parts.query)
        if kind != "azure" or set(query) != {"api-version"}:
            raise ConfigError(
                "BRIEFD_BASE_URL: a query string is not part of a base URL (for Azure OpenAI "
                "set BRIEFD_ENDPOINT_KIND=azure and BRIEFD_API_VERSION)"
            )
        api_version = api_version or query["api-version"][0]
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if kind == "azure":
        if not api_version:
            raise ConfigError("BRIEFD_API_VERSION: required for Azure OpenAI (e.g. 2024-10-21)")
        if not settings.model:
            raise ConfigError("BRIEFD_MODEL: required for Azure OpenAI: the deployment name")
    elif api_version:
        raise ConfigError("BRIEFD_API_VERSION: only for BRIEFD_ENDPOINT_KIND=azure")
    spec = EndpointSpec(
        name=DEFAULT_ENDPOINT,
        kind=kind,
        base_url=url.rstrip("/"),
        api_version=api_version,
        rpm=settings.rpm,
        tpm=settings.tpm,
    )
    key = settings.api_key_value()
    model = settings.model or discover_model(spec, key, settings)
    return Provider(
        base_url=spec.base_url,
        routing=Routing.single(spec, model, key, breakers=breakers),
        model=model,
        response_format=settings.response_format or "json_schema",
    )


def discover_model(spec: EndpointSpec, key: str | None, settings: Settings) -> str:
    """The server's only model, asked of ``GET {base_url}/models``; else :class:`ConfigError`.

    A ``compatible`` server that cannot list its models gets no ``model`` field, as
    before (llama.cpp's serves the one it loaded); the OpenAI API requires one.
    """
    url = f"{spec.base_url}/models"
    shown = _without_userinfo(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = (settings.connect_timeout_ms / 1000, min(settings.timeout_ms / 1000, 10.0))
    problem = ""
    ids: list[str] = []
    try:
        resp = requests.get(url, headers=headers, timeout=timeout, allow_redirects=False)
        if resp.status_code != 200:
            problem = f"HTTP {resp.status_code}"
        else:
            data = resp.json().get("data")
            ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except requests.exceptions.SSLError:
        problem = "TLS failed: is its certificate trusted? see REQUESTS_CA_BUNDLE"
    except requests.RequestException as err:
        problem = f"no answer: {type(err).__name__}"
    except (ValueError, AttributeError, TypeError):
        problem = "not a model list"
    if len(ids) == 1:
        logger.info("BRIEFD_MODEL unset: using {}, the only model {} offers", ids[0], shown)
        return ids[0]
    if spec.kind == "compatible" and not ids:
        logger.warning("BRIEFD_MODEL unset and {} did not list its models ({}): no model is "
                       "named in calls", shown, problem)  # fmt: skip
        return ""
    if ids:
        listed = ", ".join(one_line(i, 80) for i in ids[:_LISTED])
        more = f", and {len(ids) - _LISTED} more" if len(ids) > _LISTED else ""
        raise ConfigError(
            f"BRIEFD_MODEL: not set, and {shown} offers {len(ids)} models ({listed}{more}): "
            "name one"
        )
    raise ConfigError(
        f"BRIEFD_MODEL: not set, and {shown} did not list its models ({problem}): name the model"
    )


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _embedded(settings: Settings, breakers: Breakers) -> Provider:
    from briefd.local.server import (
        INSTALL_HINT,
        MAX_SLOTS,
        LocalModelError,
        LocalModelServer,
        engine_available,
        ensure_model,
    )

    if not engine_available():  # say so before fetching a model it could not run
        raise ConfigError(f"local model: {INSTALL_HINT}")
    try:
        path = ensure_model(settings.model_path, settings.model_dir, progress=_progress)
        # One slot per execution token: the stages briefd runs at once decode at once. Each
        # slot holds its own context (SmolLM2: ~94 MB at 4096 tokens), so a daemon with many
        # tokens gets at most MAX_SLOTS; the server queues calls beyond them.
        slots = min(settings.max_concurrent, MAX_SLOTS)
        server = LocalModelServer(path, n_parallel=slots, n_threads=settings.local_threads)
        server.start()
    except LocalModelError as err:
        raise ConfigError(f"local model: {err}") from None
    logger.info("local model {} serving at {}", server.model, server.base_url)
    model = settings.model or server.model
    spec = EndpointSpec(name="embedded", kind="embedded", base_url=server.base_url)
    return Provider(
        base_url=server.base_url,
        routing=Routing.single(spec, model, breakers=breakers),
        model=model,
        response_format=settings.response_format or "json_schema",
        _server=server,
    )


def _progress(line: str) -> None:
    logger.info("local model: {}", line)
