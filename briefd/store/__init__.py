"""The daemon's journal: the :class:`~briefd.store.base.Store` interface, its backends, and
choosing one.

``BRIEFD_DATABASE_URL`` unset: the SQLite journal in ``BRIEFD_DATA_DIR``
(:mod:`briefd.store.sqlite`), nothing to install. Set to a ``postgresql://``
URL: the PostgreSQL store (:mod:`briefd.store.postgres`, the ``[postgres]``
extra), the foundation of several daemons sharing one queue. Either way the
output files stay in ``<data_dir>/jobs``. psycopg is imported only when it is
asked for, so a daemon on SQLite never needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from briefd.config import ConfigError, PipelineSpec, Settings
from briefd.private import private_dir
from briefd.store.base import Store
from briefd.store.events import EventLog
from briefd.store.files import JobFiles

JOURNAL_FILE = "briefd.sqlite3"
"""The SQLite journal's name inside ``data_dir``."""


class JournalStore(Store, Protocol):
    """A store as the daemon holds it: with the output files it sweeps and probes at start."""

    files: JobFiles
    event_log: EventLog


def store_label(settings: Settings) -> str:
    """Where the journal is, for the start-up line, never with a password:
    ``PostgreSQL at host:port/dbname`` or ``SQLite at <path>``."""
    url = settings.database_url
    if url is None:
        return f"SQLite at {settings.data_dir / JOURNAL_FILE}"
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    host = parts.hostname or (parse_qs(parts.query).get("host") or ["local socket"])[0]
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL at {host}{port}/{unquote(parts.path.lstrip('/')) or '(default db)'}"


def open_store(
    settings: Settings,
    pipeline: PipelineSpec,
    *,
    on_finished: Callable[[str], None] | None = None,
) -> JournalStore:
    """The journal ``settings`` name, opened and checked; ConfigError (one line) if it cannot be.

    The URL's password never appears in a message: errors name it redacted.
    """
    jobs_dir = settings.data_dir / "jobs"
    url = settings.database_url
    if url is None:
        from briefd.store.sqlite import Journal

        return Journal(
            settings.data_dir / JOURNAL_FILE, pipeline, jobs_dir=jobs_dir, on_finished=on_finished
        )
    try:
        from briefd.store.pg_setup import is_postgres_url, redact_url
        from briefd.store.postgres import PostgresStore
    except ImportError as err:
        raise ConfigError(
            f"BRIEFD_DATABASE_URL is set but the PostgreSQL driver is missing ({err.name}): "
            "pip install 'briefd[postgres]'"
        ) from None
    if not is_postgres_url(url):
        raise ConfigError(
            f"BRIEFD_DATABASE_URL {redact_url(url)}: not a postgresql:// URL "
            "(unset it to use the SQLite journal)"
        )
    try:  # as the SQLite journal makes its folder: the output files go there
        private_dir(settings.data_dir)
    except OSError as err:
        raise ConfigError(f"BRIEFD_DATA_DIR {settings.data_dir}: {err.strerror or err}") from None
    return PostgresStore(
        url, pipeline, jobs_dir=jobs_dir, on_finished=on_finished, bound_s=settings.db_timeout
    )
