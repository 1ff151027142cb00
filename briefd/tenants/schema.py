"""The tenants' tables: SQLite (beside the journal's, in the same file) and PostgreSQL
(``MIGRATIONS[4]`` of :mod:`briefd.store.pg_setup` lists :data:`PG_STATEMENTS`).

No column is added to the jobs table: a job's tenant is the prefix of its key
(:mod:`briefd.tenants.ids`), so an existing journal needs no migration and its
jobs are the ``default`` tenant's.
"""

from __future__ import annotations

from typing import LiteralString

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name             TEXT PRIMARY KEY,
    weight           REAL NOT NULL DEFAULT 1,
    daily_budget_usd REAL,
    max_queued       INTEGER,
    created_at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

PG_STATEMENTS: tuple[LiteralString, ...] = (
    """CREATE TABLE briefd_tenants (
        name             text PRIMARY KEY,
        weight           float8 NOT NULL DEFAULT 1,
        daily_budget_usd float8,
        max_queued       integer,
        created_at       float8 NOT NULL
    )""",
    """CREATE TABLE briefd_api_keys (
        key_id     text PRIMARY KEY,
        tenant     text NOT NULL,
        scopes     text NOT NULL,
        digest     text NOT NULL,
        created_at float8 NOT NULL,
        revoked_at float8
    )""",
    "COMMENT ON COLUMN briefd_api_keys.digest IS 'HMAC-SHA256 of the key (server secret)'",
    """CREATE TABLE briefd_secrets (
        name  text PRIMARY KEY,
        value text NOT NULL
    )""",
)
