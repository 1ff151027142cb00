"""Tenants and keys in the journal's database, and the per-tenant reads of its jobs.

One class over both backends: the SQL is the same but for the placeholder and
two string functions (:class:`_Dialect`). It opens its *own* connection (SQLite,
WAL: readers never wait for the journal) or small pool (PostgreSQL), so the
journal's classes are untouched and the CLI can use it while a daemon runs.

The jobs table has no tenant column: a job's tenant is its key's prefix
(:mod:`briefd.tenants.ids`), matched here by ``substr``/``left`` equality, not by
``LIKE`` (a tenant's ``_`` is a wildcard there) nor by a range (PostgreSQL's
collations may not order ``.`` before ``/``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from briefd.config import ConfigError, Settings
from briefd.messages import JobState
from briefd.store.base import StoreUnavailable
from briefd.tenants import keys
from briefd.tenants.ids import DEFAULT_TENANT, SEPARATOR
from briefd.tenants.schema import SQLITE_SCHEMA

SECRET_NAME = "api_keys"


@dataclass(frozen=True)
class Tenant:
    """A tenant's settings (``default`` exists without a row: weight 1, the daemon's limits)."""

    name: str
    weight: float = 1.0
    daily_budget_usd: float | None = None
    max_queued: int | None = None


@dataclass(frozen=True)
class KeyRow:
    """A key as stored: never the key itself, only its digest."""

    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    digest: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class _Dialect:
    mark: str
    prefix: str  # a format with {n}: the first n characters of job_id
    tenant: str  # the tenant of job_id
    no_dot: str
    table: dict[str, str]


_SQLITE = _Dialect(
    "?",
    "substr(job_id, 1, {n})",
    "CASE WHEN instr(job_id, '.') > 0 THEN substr(job_id, 1, instr(job_id, '.') - 1) "
    "ELSE 'default' END",
    "instr(job_id, '.') = 0",
    {"tenants": "tenants", "keys": "api_keys", "secrets": "server_secrets", "jobs": "jobs"},
)
_PG = _Dialect(
    "%s",
    "left(job_id, {n})",
    "CASE WHEN strpos(job_id, '.') > 0 THEN split_part(job_id, '.', 1) ELSE 'default' END",
    "strpos(job_id, '.') = 0",
    {
        "tenants": "briefd_tenants",
        "keys": "briefd_api_keys",
        "secrets": "briefd_secrets",
        "jobs": "briefd_jobs",
    },
)


class TenantStore:
    """Tenants, keys and the server secret; per-tenant job figures. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        self._pool: Any = None
        self._db: sqlite3.Connection | None = None
        self._secret: bytes | None = None
        if settings.database_url is None:
            from briefd.store import JOURNAL_FILE
            from briefd.store.sqlite_open import open_journal_db

            self._d = _SQLITE
            path = Path(settings.data_dir) / JOURNAL_FILE
            if path.exists():  # checked by the journal (a daemon's start): not read twice
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            else:  # made whole and private, as the journal makes it
                self._db = open_journal_db(path)
            self._db.execute("PRAGMA busy_timeout=5000")
            for statement in SQLITE_SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
        else:
            try:
                from briefd.store.pg_setup import open_schema_pool
            except ImportError as err:
                raise ConfigError(
                    f"BRIEFD_DATABASE_URL is set but the PostgreSQL driver is missing "
                    f"({err.name}): pip install 'briefd[postgres]'"
                ) from None
            self._d = _PG
            self._pool = open_schema_pool(
                settings.database_url,
                max_size=2,
                timeout_s=10.0,
                bound_s=settings.db_timeout,
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._pool is not None:
            self._pool.close()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        try:
            if self._db is not None:
                with self._lock:
                    yield self._db.cursor()
            else:
                with self._pool.connection() as conn, conn.transaction():
                    yield conn.cursor()
        except (sqlite3.OperationalError, OSError) as err:
            raise StoreUnavailable(f"tenants: {err}") from err
        except Exception as err:
            if type(err).__module__.startswith(("psycopg", "psycopg_pool")):
                from briefd.store.pg_setup import one_line

                raise StoreUnavailable(f"tenants: {one_line(err)}") from None
            raise

    def _sql(self, text: str) -> str:
        for name, table in self._d.table.items():
            text = text.replace("{" + name + "}", table)
        return text.replace("?", self._d.mark)

    def _all(self, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._cursor() as cur:
            cur.execute(self._sql(text), params)
            return [tuple(r) for r in cur.fetchall()]

    def _run(self, text: str, params: tuple[Any, ...] = ()) -> int:
        with self._cursor() as cur:
            cur.execute(self._sql(text), params)
            return int(cur.rowcount)

    # -- tenants ---------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant) -> bool:
        """Create or update ``tenant``; True if it was new."""
        existed = self.tenant(tenant.name, implicit=False) is not None
        self._run(
            "INSERT INTO {tenants} (name, weight, daily_budget_usd, max_queued, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET weight = excluded.weight, "
            "daily_budget_usd = excluded.daily_budget_usd, max_queued = excluded.max_queued",
            (tenant.name, tenant.weight, tenant.daily_budget_usd, tenant.max_queued, time.time()),
        )
        return not existed

    def tenants(self) -> dict[str, Tenant]:
        """Every tenant, ``default`` included (implicit unless it has a row)."""
        rows = self._all(
            "SELECT name, weight, daily_budget_usd, max_queued FROM {tenants} ORDER BY name"
        )
        found = {r[0]: Tenant(r[0], float(r[1]), _opt_float(r[2]), _opt_int(r[3])) for r in rows}
        found.setdefault(DEFAULT_TENANT, Tenant(DEFAULT_TENANT))
        return dict(sorted(found.items()))

    def tenant(self, name: str, *, implicit: bool = True) -> Tenant | None:
        found = self.tenants()
        if not implicit and name == DEFAULT_TENANT:
            rows = self._all("SELECT 1 FROM {tenants} WHERE name = ?", (name,))
            return found[name] if rows else None
        return found.get(name)

    # -- keys ------------------------------------------------------------------------

    def secret(self) -> bytes:
        """The server secret keys are hashed with: made once, the same for every daemon."""
        if self._secret is None:
            self._run(
                "INSERT INTO {secrets} (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (SECRET_NAME, keys.new_server_secret()),
            )
            rows = self._all("SELECT value FROM {secrets} WHERE name = ?", (SECRET_NAME,))
            self._secret = bytes.fromhex(rows[0][0])
        return self._secret

    def create_key(self, tenant: str, scopes: tuple[str, ...]) -> keys.NewKey:
        """A new key for ``tenant`` (which must exist); its token is returned once."""
        if self.tenant(tenant) is None:
            raise ConfigError(f"tenant {tenant}: no such tenant (briefd tenant add {tenant})")
        made = keys.new_key(self.secret())
        self._run(
            "INSERT INTO {keys} (key_id, tenant, scopes, digest, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (made.key_id, tenant, ",".join(scopes), made.digest, time.time()),
        )
        return made

    def list_keys(self) -> list[KeyRow]:
        rows = self._all(
            "SELECT key_id, tenant, scopes, digest, created_at, revoked_at FROM {keys} "
            "ORDER BY created_at"
        )
        return [_key_row(r) for r in rows]

    def find_key(self, key_id: str) -> KeyRow | None:
        rows = self._all(
            "SELECT key_id, tenant, scopes, digest, created_at, revoked_at FROM {keys} "
            "WHERE key_id = ?",
            (key_id,),
        )
        return _key_row(rows[0]) if rows else None

    def revoke_key(self, key_id: str) -> bool:
        """Revoke ``key_id``; False if there is no such live key."""
        n = self._run(
            "UPDATE {keys} SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return n > 0

    # -- the tenants' jobs -----------------------------------------------------------

    def _only(self, tenant: str) -> tuple[str, tuple[Any, ...]]:
        """A WHERE condition (and its parameters) for ``tenant``'s jobs."""
        if tenant == DEFAULT_TENANT:
            return self._d.no_dot, ()
        prefix = f"{tenant}{SEPARATOR}"
        return f"{self._d.prefix.format(n=len(prefix))} = ?", (prefix,)

    def job_keys(self, tenant: str, state: JobState | None, limit: int) -> list[str]:
        """The keys of ``tenant``'s newest ``limit`` jobs, optionally only in ``state``."""
        where, params = self._only(tenant)
        if state is not None:
            where, params = f"{where} AND state = ?", (*params, state.value)
        rows = self._all(
            f"SELECT job_id FROM {{jobs}} WHERE {where} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return [str(r[0]) for r in rows]

    def queued(self, tenant: str) -> int:
        """``tenant``'s jobs waiting in the queue (every daemon's, on PostgreSQL)."""
        where, params = self._only(tenant)
        rows = self._all(
            f"SELECT count(*) FROM {{jobs}} WHERE state = ? AND {where}",
            (JobState.QUEUED.value, *params),
        )
        return int(rows[0][0])

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs by tenant and state (tenants with jobs only)."""
        rows = self._all(
            f"SELECT {self._d.tenant} AS t, state, count(*) FROM {{jobs}} GROUP BY t, state"
        )
        out: dict[str, dict[str, int]] = {}
        for t, state, n in rows:
            out.setdefault(str(t), dict.fromkeys((s.value for s in JobState), 0))[state] = int(n)
        return out

    def spent_since(self, since: float) -> dict[str, float]:
        """USD spent by each tenant's jobs that ended at or after ``since`` (Unix time)."""
        if self._db is not None:
            usd = "json_extract(result, '$.total_cost_usd')"
            rows = self._all(
                f"SELECT {self._d.tenant} AS t, COALESCE(SUM({usd}), 0) FROM jobs "
                "WHERE finished_at >= ? AND result IS NOT NULL GROUP BY t",
                (since,),
            )
        else:
            rows = self._all(
                f"SELECT {self._d.tenant} AS t, "
                "COALESCE(SUM((result::json ->> 'total_cost_usd')::float8), 0) "
                "FROM briefd_jobs WHERE finished_at >= to_timestamp(?) AND result IS NOT NULL "
                "GROUP BY t",
                (since,),
            )
        return {str(t): round(float(v), 6) for t, v in rows}

    def queue_waits(self, limit: int = 1000) -> dict[str, list[float]]:
        """Seconds from submission to first run of each tenant's last ``limit`` started jobs."""
        wait = (
            "started_at - submitted_at"
            if self._db is not None
            else "extract(epoch FROM started_at - submitted_at)::float8"
        )
        rows = self._all(
            f"SELECT {self._d.tenant} AS t, {wait} FROM {{jobs}} "
            "WHERE started_at IS NOT NULL ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        out: dict[str, list[float]] = {}
        for t, w in rows:
            out.setdefault(str(t), []).append(max(0.0, float(w)))
        return out


def _key_row(r: tuple[Any, ...]) -> KeyRow:
    return KeyRow(
        key_id=str(r[0]),
        tenant=str(r[1]),
        scopes=tuple(s for s in str(r[2]).split(",") if s),
        digest=str(r[3]),
        created_at=float(r[4]),
        revoked_at=_opt_float(r[5]),
    )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
