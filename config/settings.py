"""Settings: a TOML file plus ``BRIEFD_*`` environment variables (environment wins).

The environment names are a public contract (see the README's table). Secrets
are ``SecretStr`` so that they never print, not even in a ``repr``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from briefd.config.errors import ConfigError, describe_validation

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("briefd_config_file", default=None)


class Settings(BaseSettings):
    """Everything that can be set without touching code.

    Programmatic use: ``Settings(base_url="http://127.0.0.1:8000/v1")``; the
    CLI and daemon use :meth:`load`, which adds a TOML file under the
    environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="BRIEFD_", extra="forbid", frozen=True, validate_default=True
    )

    # The API
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1. "
        "Unset: the embedded local model.",
    )
    model: str = Field(default="", description="Model name sent to the API ('' = server default).")
    api_key: SecretStr | None = Field(default=None, description="Bearer token for the API.")

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
    response_format: Literal["json_schema", "json_object", "none"] | None = Field(
        default=None,
        description="How JSON stages ask for JSON: json_schema (OpenAI, vLLM), json_object "
        "with a schema (llama.cpp); unset: chosen by provider.",
    )
    rate_limit_cooldown: bool = Field(
        default=True, description="On 429, pause every grant until Retry-After has passed."
    )
    buffer_results: bool = Field(default=True, description="false: deliver each stage as done.")
    reask_invalid_json: bool = Field(default=False, description="One re-ask on invalid JSON.")

    # Pipeline
    pipeline: Path | None = Field(default=None, description="Pipeline TOML (default: built in).")

    # Embedded local model
    model_path: Path | None = None
    model_dir: Path | None = None

    # Logging
    log_format: Literal["auto", "json", "text"] = "auto"
    log_file: Path | None = None
    log_level: str = "INFO"

    # Daemon
    data_dir: Path = Path("./var/briefd")
    listen: str = "127.0.0.1:8765"
    token_file: Path | None = None
    grace_s: float = Field(default=30.0, ge=0)
    max_active_jobs: int = Field(default=64, ge=1)
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
            where = f"config file {path} or environment" if path else "environment"
            raise ConfigError(describe_validation(err, where=where)) from None
        except ValueError as err:  # TOML syntax errors
            raise ConfigError(f"config file {path}: {err}") from None
        finally:
            _CONFIG_FILE.reset(token)

    def resolved_token_file(self) -> Path:
        """The daemon's bearer-token file (default: inside ``data_dir``)."""
        return self.token_file or self.data_dir / "token"

    def api_key_value(self) -> str | None:
        """The API key in clear, for the Authorization header only."""
        return self.api_key.get_secret_value() if self.api_key else None
