"""Where the stages' API lives: a configured server, or the embedded local model.

With ``BRIEFD_BASE_URL`` set, briefd talks to that server. Without it, briefd
starts the embedded model (llama-cpp-python's OpenAI-compatible server with
SmolLM2-135M) on 127.0.0.1 and stops it when done, the way an application
uses SQLite before it needs PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from briefd.config import ConfigError, Settings


@dataclass
class Provider:
    """An OpenAI-compatible endpoint, and what to stop when done with it."""

    base_url: str
    model: str = ""
    response_format: str | None = None
    _server: Any = field(default=None, repr=False)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def open_provider(settings: Settings) -> Provider:
    """The configured server, or a freshly started local model."""
    if settings.base_url:
        if not settings.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"BRIEFD_BASE_URL: not an http(s) URL: {settings.base_url!r}")
        return Provider(
            base_url=settings.base_url,
            model=settings.model,
            response_format=settings.response_format or "json_schema",
        )
    from briefd.local.server import (
        INSTALL_HINT,
        LocalModelError,
        LocalModelServer,
        ensure_model,
        llama_server_available,
    )

    if not llama_server_available():  # say so before fetching a model it could not run
        raise ConfigError(f"local model: {INSTALL_HINT}")
    try:
        path = ensure_model(settings.model_path, settings.model_dir, progress=_progress)
        server = LocalModelServer(path).start()
    except LocalModelError as err:
        raise ConfigError(f"local model: {err}") from None
    logger.info("local model {} serving at {}", server.model, server.base_url)
    return Provider(
        base_url=server.base_url,
        model=settings.model or server.model,
        response_format=settings.response_format or "json_object",
        _server=server,
    )


def _progress(line: str) -> None:
    logger.info("local model: {}", line)
