"""Settings: a TOML file plus ``BRIEFD_*`` environment variables (environment wins).

The environment names are a public contract (see the README's table). Secrets
are ``SecretStr`` so that they never print, not even in a ``repr``.

Settings forgive what a person would expect to work and refuse the rest in
their own words: log level names in any case; errors that name the
environment variable (``BRIEFD_MAX_CONCURRENT``), not the Python field; and a
``BRIEFD_*`` variable briefd does not know is reported
(:func:`unknown_environment`), because a misspelt one would otherwise be
silently ignored.
"""

from __future__ import annotations

import difflib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from briefd.config.errors import ConfigError

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("briefd_config_file", default=None)
ENV_PREFIX = "BRIEFD_"
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
# Variables briefd reads that are not settings fields.
OTHER_ENV = frozenset({"BRIEFD_CONFIG", "BRIEFD_MODEL_WHEEL", "BRIEFD_SKIP_LOCAL"})


def default_data_dir() -> Path:
    """The per-user state directory: ``$XDG_STATE_HOME/briefd``, else ``~/.local/state/briefd``.

    The same wherever the daemon or a client is started, so ``briefd submit``
    in any shell finds the daemon's token. The systemd unit sets
    ``BRIEFD_DATA_DIR=/var/lib/briefd``.
    """
    return Path(platformdirs.user_state_dir("briefd", appauthor=False))


def env_name(field: str) -> str:
    """A settings field's variable: ``max_concurrent`` -> ``BRIEFD_MAX_CONCURRENT``."""
    return ENV_PREFIX + field.upper()


class Settings(BaseSettings):
    """Everything that can be set without touching code.

    Programmatic use: ``Settings(base_url="http://127.0.0.1:8000/v1")``; the
    CLI and daemon use :meth:`load`, which adds a TOML file under the
    environment.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # The API
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1. "
        "Unset: the embedded local model.",
    )
    model: str = Field(
        default="",
        description="The default model: an alias of BRIEFD_ENDPOINTS, or with BRIEFD_BASE_URL the "
        "model name sent ('' = the server's only model, asked of its /models).",
    )
    api_key: SecretStr | None = Field(default=None, description="Bearer token for the API.")
    endpoint_kind: Literal["openai", "azure", "compatible"] = Field(
        default="openai",
        description="What BRIEFD_BASE_URL speaks: openai (only the OpenAI API's documented "
        "arguments are sent), azure (Azure OpenAI), compatible (vLLM, Ollama, llama.cpp...: a "
        "pipeline's extra params are sent too).",
    )
    api_version: str | None = Field(
        default=None, description="Azure OpenAI's api-version (with BRIEFD_ENDPOINT_KIND=azure)."
    )
    endpoints: Path | None = Field(
        default=None,
        description="A TOML file of endpoints and model aliases (docs/providers.md); replaces "
        "BRIEFD_BASE_URL.",
    )
    failover_after_s: float = Field(
        default=10.0,
        ge=0,
        description="A 429 asking to wait longer than this moves the stage to the next endpoint "
        "of its model alias at once (when there is one).",
    )
    breaker_failures: int = Field(
        default=3,
        ge=1,
        description="Consecutive failures another endpoint could fix that open an endpoint's "
        "circuit breaker (stages skip it while open).",
    )
    breaker_cooldown_s: float = Field(
        default=30.0, gt=0, description="How long an open breaker waits before one probe call."
    )
    job_deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="A job's deadline unless it sets deadline_s: past it, stages still waiting "
        "or retrying end DEADLINE_EXCEEDED (unset: none).",
    )
    max_rate_limited: int = Field(
        default=20,
        ge=0,
        description="429s one stage takes (apart from BRIEFD_MAX_RETRIES) before it gives up.",
    )

    # Concurrency and retries (the seed's ParallelConfig)
    max_concurrent: int = Field(default=2, ge=1, le=256, description="Execution tokens.")
    parallel: bool = Field(default=True, description="false: one stage at a time (rollback).")
    retry_enabled: bool = True
    max_retries: int = Field(default=2, ge=0, le=20)
    timeout_ms: int = Field(default=60_000, ge=10, description="Per call, total deadline.")
    connect_timeout_ms: int = Field(default=5_000, ge=10)
    backoff_initial_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    retry_after_max_s: float = Field(default=120.0, ge=0, description="Clamp on Retry-After.")
    stream: bool = Field(
        default=True,
        description="Stream answers (stream: true) where the endpoint allows; false: whole "
        "answers only (an endpoint's or a stage's stream = false turns it off there).",
    )
    idle_timeout_ms: int = Field(
        default=15_000,
        ge=10,
        description="A streamed answer with no chunk for this long is cut (STALLED, retried).",
    )
    first_token_timeout_ms: int | None = Field(
        default=None,
        ge=10,
        description="A streamed answer with no first token by then is cut (STALLED, retried). "
        "Unset: BRIEFD_TIMEOUT_MS.",
    )
    hedge_after_ms: str | None = Field(
        default=None,
        description="Hedging (off by default): a call with no first token after this many ms "
        "(or 'p95' of recent first tokens) sends a second copy, the first answer wins; hedges "
        "are at most 10 % of calls.",
    )
    response_format: Literal["json_schema", "json_object", "none"] | None = Field(
        default=None,
        description="How JSON stages ask for JSON: json_schema (OpenAI, vLLM), json_object "
        "with a schema (llama.cpp); unset: chosen by provider.",
    )
    rate_limit_cooldown: bool = Field(
        default=True, description="On 429, pause every grant until Retry-After has passed."
    )
    adaptive: bool = Field(
        default=True,
        description="Adapt the calls in flight (1..BRIEFD_MAX_CONCURRENT) to 429s, 503s and "
        "timeouts; false: always BRIEFD_MAX_CONCURRENT.",
    )
    rpm: float | None = Field(
        default=None, gt=0, description="The provider's requests per minute (unset: no budget)."
    )
    tpm: float | None = Field(
        default=None,
        gt=0,
        description="The provider's tokens per minute (unset: no budget); a call is estimated "
        "as prompt characters / 4 + max_tokens, then settled from its usage.",
    )
    buffer_results: bool = Field(default=True, description="false: deliver each stage as done.")
    reask_invalid_json: bool = Field(default=False, description="One re-ask on invalid JSON.")

    # Pipeline
    pipeline: Path | None = Field(default=None, description="Pipeline TOML (default: built in).")
    pipelines: Path | None = Field(
        default=None,
        description="A folder of named pipeline TOML files (NAME.toml); a job picks one with "
        '"pipeline": NAME. Reloaded on SIGHUP.',
    )

    # Embedded local model
    model_path: Path | None = None
    model_dir: Path | None = None
    local_threads: int | None = Field(
        default=None, ge=1, le=256, description="Embedded model's threads (unset: usable cores)."
    )

    # Logging
    log_format: Literal["auto", "json", "text"] = "auto"
    log_file: Path | None = None
    log_level: str = Field(default="INFO", description="TRACE, DEBUG, INFO, WARNING, ERROR...")

    # Daemon
    data_dir: Path = Field(default_factory=default_data_dir)
    listen: str = "127.0.0.1:8765"
    allowed_origins: str = Field(
        default="",
        description="Comma-separated exact origins (https://app.example.com) allowed by CORS; "
        "'' = none: any Origin is refused.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated host names a reverse proxy may forward, besides the "
        "bound address.",
    )
    ui: bool = Field(default=False, description="Serve the example web page at /ui/.")
    max_streams_per_token: int = Field(
        default=32, ge=1, description="Concurrent event streams one API token may hold."
    )
    # Tenants' API keys (docs/tenants.md): the cache of verified keys, per-key rates.
    key_cache_s: float = Field(
        default=2.0, ge=0, le=5, description="A verified API key is trusted this long (s)."
    )
    api_rate_per_key: float = Field(
        default=50.0, ge=0, description="Requests per second one API key may make (0: no limit)."
    )
    api_burst_per_key: float = Field(default=100.0, ge=1, description="Its burst (requests).")
    auth_failures_per_minute: float = Field(
        default=30.0, gt=0, description="Failed authentications per client address per minute."
    )
    webhook_url: str | None = Field(
        default=None, description="Where jobs without a webhook push their terminal event."
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Standard Webhooks secret (whsec_<base64>) signing every delivery.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook URLs on loopback, private, link-local or metadata addresses.",
    )
    webhook_retry_initial_s: float = Field(
        default=5.0, gt=0, description="First webhook retry's delay; doubles, with jitter."
    )
    webhook_retry_max_s: float = Field(
        default=3600.0, gt=0, description="Longest delay between two attempts of a delivery."
    )
    webhook_retry_for_s: float = Field(
        default=86_400.0, gt=0, description="A delivery not accepted by then is failed (24 h)."
    )
    token_file: Path | None = None
    grace_s: float = Field(default=30.0, ge=0)
    max_active_jobs: int | None = Field(
        default=None,
        ge=1,
        description="Jobs running at once (each a coordinator and its stage actors); the rest "
        "wait as data. Unset: 1.5 x max_concurrent, at least 8 (every active job has a stage "
        "ready or running nearly all the time, so K jobs keep K tokens busy and the half more "
        "covers backoffs; more only park threads that compete for the interpreter).",
    )
    max_queued_jobs: int = Field(default=10_000, ge=0)
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest job body the daemon reads (bytes)."
    )
    restart_budget: int = Field(
        default=3,
        ge=0,
        description="Times a job is restarted after its run died (coordinator crash or "
        "daemon crash) before it is failed.",
    )
    database_url: str | None = Field(
        default=None,
        repr=False,
        description="The journal in PostgreSQL, postgresql://user:password@host/db (needs the "
        "[postgres] extra; holds a password: never printed whole). Unset: SQLite in data_dir.",
    )
    lease_s: float = Field(
        default=5.0,
        ge=1.0,
        le=3600.0,
        description="With PostgreSQL: how long a daemon's claim on a job (and on an execution "
        "token) lasts unless renewed; renewed every lease_s/3. A dead daemon's jobs are taken "
        "over by another within about one lease plus one poll.",
    )
    poll_s: float = Field(
        default=1.0,
        gt=0,
        le=60.0,
        description="With PostgreSQL: the safety-net poll for new jobs and free tokens when no "
        "LISTEN/NOTIFY wake-up arrives (a notification wakes a daemon at once).",
    )
    db_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=600.0,
        description="With PostgreSQL: the server-side bound on every briefd session "
        "(lock_timeout, statement_timeout, idle_in_transaction_session_timeout) and the TCP "
        "bound on a silent peer (tcp_user_timeout, keepalives). Unset: lease_s/2. A paused or "
        "cut-off daemon's locks are freed by PostgreSQL within it; must be below lease_s.",
    )

    # Costs and budgets (config/prices.toml; README "Costs and budgets")
    prices: Path | None = Field(
        default=None, description="Price table TOML, USD per million tokens (default: built in)."
    )
    max_job_cost_usd: float | None = Field(
        default=None, gt=0, description="Per job, unless the job sets max_cost_usd (unset: none)."
    )
    max_job_tokens: int | None = Field(
        default=None, ge=1, description="Per job, unless the job sets max_tokens (unset: none)."
    )
    daily_budget_usd: float | None = Field(
        default=None,
        ge=0,
        description="Daemon spend per UTC day; once spent, new jobs wait queued (unset: none).",
    )

    # Automatic rollback to sequential (briefd serve; README "Automatic rollback")
    auto_rollback: bool = Field(
        default=False, description="Run new jobs sequentially while a rollback signal is crossed."
    )
    rollback_window: int = Field(default=50, ge=1, description="Recent stage outcomes judged.")
    rollback_min_samples: int = Field(
        default=10, ge=1, description="Outcomes needed before a signal can trip or clear."
    )
    rollback_probation_s: float = Field(
        default=300.0, ge=0, description="Sequential time before parallel is tried again."
    )
    rollback_trial_fraction: float = Field(
        default=0.5, gt=0, le=1, description="Share of new jobs run parallel on probation."
    )
    rollback_baseline: Path | None = Field(
        default=None, description="A `briefd report --json` whose rates are the baseline."
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _postgres_url(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None  # BRIEFD_DATABASE_URL= (empty) means unset
            scheme = urlsplit(value.strip()).scheme.lower()
            if scheme not in ("postgresql", "postgres"):
                # The value is not echoed: it may hold a password.
                got = f"{scheme}://..." if scheme else "no scheme"
                raise ValueError(f"must be a postgresql:// URL (got {got})")
        return value

    @field_validator("db_timeout_s")
    @classmethod
    def _db_timeout_below_lease(cls, value: float | None, info: ValidationInfo) -> float | None:
        lease = info.data.get("lease_s")
        if value is not None and lease is not None and value >= lease:
            raise ValueError(
                f"{value:g} must be below lease_s ({lease:g}): a lock held by a paused daemon "
                "must be freed before its claims lapse"
            )
        return value

    @property
    def db_timeout(self) -> float:
        """The database bound in effect: ``db_timeout_s``, or ``lease_s / 2``."""
        return self.db_timeout_s if self.db_timeout_s is not None else self.lease_s / 2

    @field_validator("hedge_after_ms")
    @classmethod
    def _hedge_after(cls, value: str | None) -> str | None:
        """Milliseconds > 0, or p95 (briefd.llm.hedge reads it)."""
        text = (value or "").strip().lower()
        if not text:
            return None
        try:
            ok = text == "p95" or 0 < float(text) < 1e9
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{value!r}: a number of milliseconds > 0, or p95")
        return text

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        if isinstance(value, str):
            upper = value.strip().upper()
            if upper not in LOG_LEVELS:
                raise ValueError(f"{value!r} is not a log level (one of {', '.join(LOG_LEVELS)})")
            return upper
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: object) -> Settings:
        """Settings from ``config_file`` (or ``$BRIEFD_CONFIG``) under the environment.

        Raises :class:`ConfigError` naming the file or variable at fault.
        """
        raw = config_file or os.environ.get("BRIEFD_CONFIG") or None
        path = Path(raw) if raw else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        token = _CONFIG_FILE.set(path)
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as err:
            raise ConfigError(_describe(err, path)) from None
        except ValueError as err:  # TOML syntax errors
            raise ConfigError(f"config file {path}: {err}") from None
        finally:
            _CONFIG_FILE.reset(token)

    def resolved_token_file(self) -> Path:
        """The daemon's bearer-token file (default: inside ``data_dir``)."""
        return self.token_file or self.data_dir / "token"

    @property
    def active_jobs(self) -> int:
        """The active window: ``max_active_jobs``, or 1.5 x ``max_concurrent`` (at least 8).

        Measured at 100 jobs, K=16 (7 interleaved rounds): a window of 64 (the old
        4 x K) took 2.24 s and 4.5 ms of CPU per call, 24 took 2.06 s and 3.9 ms, 16
        took 2.10 s: past what the tokens can serve, active jobs only add threads.
        """
        if self.max_active_jobs is not None:
            return self.max_active_jobs
        return max(8, (3 * self.max_concurrent + 1) // 2)

    def api_key_value(self) -> str | None:
        """The API key in clear, for the Authorization header only."""
        return self.api_key.get_secret_value() if self.api_key else None


def _describe(err: ValidationError, path: Path | None) -> str:
    """One line per problem, each naming the variable (and the config key when a file is used)."""
    parts = []
    for e in err.errors(include_url=False, include_input=False):
        field = str(e["loc"][0]) if e["loc"] else ""
        if field in Settings.model_fields:
            name = env_name(field) + (f" (or {field} in {path})" if path else "")
        else:
            name = f"{field} in {path}" if path else field or "(settings)"
        parts.append(f"{name}: {e['msg'].removeprefix('Value error, ')}")
    return "settings: " + "; ".join(parts)


def unknown_environment(environ: dict[str, str] | None = None) -> list[str]:
    """``BRIEFD_*`` variables that briefd does not read, each with a suggestion if one is close.

    >>> unknown_environment({"BRIEFD_MAX_CONCURENT": "4"})
    ['BRIEFD_MAX_CONCURENT (did you mean BRIEFD_MAX_CONCURRENT?)']
    """
    env = os.environ if environ is None else environ
    known = {env_name(f) for f in Settings.model_fields} | OTHER_ENV
    found = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            found.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return found
