"""Reaching the PostgreSQL journal: its URL (never printed whole), the pool, the schema.

The schema is made, or upgraded, by whichever daemon starts first, inside one
transaction that holds an advisory lock: several daemons starting together
against an empty database make it exactly once, and a half-made schema never
exists (PostgreSQL's DDL is transactional). ``briefd_schema`` holds one row per
version applied; a daemon that finds a newer version than it knows refuses to
start, in one line, instead of writing rows a newer briefd reads differently.
"""

from __future__ import annotations

import math
from typing import Any, LiteralString
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import psycopg
from psycopg_pool import ConnectionPool

import briefd
from briefd.config import ConfigError
from briefd.redaction import redact, register_secret
from briefd.store.pinned import PG_MIGRATION
from briefd.tenants.schema import PG_STATEMENTS as TENANT_STATEMENTS

SCHEMES = ("postgresql", "postgres")
SCHEMA_VERSION = 4
SCHEMA_LOCK = 0x62726965_66640001
"""The advisory lock (one bigint) held while the schema is checked and made: 'briefd' + 1."""
DEFAULT_BOUND_S = 2.5
"""The database bound when none is given (half the default lease): see :func:`session_bounds`."""
SCHEMA_BOUND_MS = 60_000
"""Making or upgrading the schema may wait this long for another daemon doing it."""

# Each version's statements, applied in order inside one transaction. Payloads are
# JSON *text* (as Python's json writes it, NaN included, which PostgreSQL's json
# type refuses), so a row reads back exactly as the SQLite journal's would.
MIGRATIONS: dict[int, tuple[LiteralString, ...]] = {
    1: (
        """CREATE TABLE briefd_schema (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now(),
            applied_by text NOT NULL
        )""",
        """CREATE TABLE briefd_jobs (
            seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id       text NOT NULL UNIQUE,
            spec         text NOT NULL,
            state        text NOT NULL,
            submitted_at timestamptz NOT NULL DEFAULT now(),
            started_at   timestamptz,
            finished_at  timestamptz,
            runs         integer NOT NULL DEFAULT 0,
            restarts     integer NOT NULL DEFAULT 0,
            result       text,
            claimed_by   text,
            lease_until  timestamptz,
            fence        bigint NOT NULL DEFAULT 0
        )""",
        "COMMENT ON COLUMN briefd_jobs.runs IS 'runs begun since the last clean end'",
        "COMMENT ON COLUMN briefd_jobs.restarts IS 'runs that died, over the job''s life'",
        "COMMENT ON COLUMN briefd_jobs.claimed_by IS 'reserved: the daemon running the job'",
        "COMMENT ON COLUMN briefd_jobs.lease_until IS 'reserved: when that claim lapses'",
        "COMMENT ON COLUMN briefd_jobs.fence IS 'reserved: the claim''s fencing token'",
        "CREATE INDEX briefd_jobs_by_state ON briefd_jobs (state, seq)",
        "CREATE SEQUENCE briefd_fence AS bigint",
        """CREATE TABLE briefd_stages (
            job_id     text NOT NULL REFERENCES briefd_jobs (job_id) ON DELETE CASCADE,
            stage      text NOT NULL,
            state      text NOT NULL,
            attempts   integer NOT NULL DEFAULT 0,
            document   text,
            error      text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, stage)
        )""",
    ),
    # Version 2: several daemons on one database. Jobs are claimed under a lease with a
    # fencing token (briefd/store/pg_claims.py); the execution tokens, the adaptive window
    # and the RPM/TPM budgets are one set for the cluster (briefd/cluster/tokens.py).
    2: (
        "ALTER TABLE briefd_jobs ADD COLUMN priority integer NOT NULL DEFAULT 0",
        "ALTER TABLE briefd_jobs ADD COLUMN claimed_at timestamptz",
        "ALTER TABLE briefd_jobs ADD COLUMN cancel_requested text",
        "COMMENT ON COLUMN briefd_jobs.claimed_by IS 'the daemon running the job (NULL: free)'",
        "COMMENT ON COLUMN briefd_jobs.lease_until IS 'when that claim lapses unless renewed'",
        "COMMENT ON COLUMN briefd_jobs.fence IS 'the claim''s fencing token: writes must carry it'",
        "COMMENT ON COLUMN briefd_jobs.cancel_requested IS 'a cancel asked of another daemon'",
        """CREATE INDEX briefd_jobs_live ON briefd_jobs (seq)
            WHERE state IN ('queued', 'running')""",
        """CREATE TABLE briefd_daemons (
            daemon_id  text PRIMARY KEY,
            host       text NOT NULL,
            pid        integer NOT NULL,
            version    text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            seen_at    timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE briefd_limiter (
            id              integer PRIMARY KEY CHECK (id = 1),
            ceiling         integer NOT NULL,
            adaptive        boolean NOT NULL DEFAULT true,
            w               float8 NOT NULL,
            epoch           bigint NOT NULL DEFAULT 0,
            cuts            bigint NOT NULL DEFAULT 0,
            rpm             float8,
            tpm             float8,
            rpm_tat         float8 NOT NULL DEFAULT 0,
            tpm_tat         float8 NOT NULL DEFAULT 0,
            pause_until     float8 NOT NULL DEFAULT 0,
            cooldown_until  float8 NOT NULL DEFAULT 0,
            pauses          bigint NOT NULL DEFAULT 0,
            rate_limited    bigint NOT NULL DEFAULT 0,
            granted_total   bigint NOT NULL DEFAULT 0,
            reclaimed_total bigint NOT NULL DEFAULT 0,
            latencies       text NOT NULL DEFAULT '{}',
            set_by          text
        )""",
        "COMMENT ON TABLE briefd_limiter IS 'the cluster''s window and budgets; times: epoch s'",
        """CREATE TABLE briefd_token_waits (
            wait_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            daemon_id    text NOT NULL,
            requester    text NOT NULL,
            job_id       text NOT NULL,
            stage        text NOT NULL,
            job_priority integer NOT NULL DEFAULT 0,
            admitted_at  float8 NOT NULL,
            priority     integer NOT NULL DEFAULT 0,
            downstream   text NOT NULL DEFAULT '{}',
            est_tokens   integer NOT NULL DEFAULT 0,
            requested_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE SEQUENCE briefd_token_fence AS bigint",
        """CREATE TABLE briefd_tokens (
            lease_id   bigint PRIMARY KEY,
            wait_id    bigint NOT NULL,
            daemon_id  text NOT NULL,
            requester  text NOT NULL,
            job_id     text NOT NULL,
            stage      text NOT NULL,
            epoch      bigint NOT NULL,
            est_tokens integer NOT NULL DEFAULT 0,
            waited_ms  integer NOT NULL DEFAULT 0,
            delivered  boolean NOT NULL DEFAULT false,
            granted_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        )""",
        "CREATE INDEX briefd_tokens_by_daemon ON briefd_tokens (daemon_id, delivered)",
        "COMMENT ON COLUMN briefd_token_waits.admitted_at IS 'job admitted, epoch s (0: unknown)'",
        "COMMENT ON COLUMN briefd_tokens.lease_id IS 'from briefd_token_fence: the grant''s fence'",
    ),
    # Version 3: one limiter row per endpoint (briefd/cluster/shared.py), so grant rounds
    # for different endpoints lock different rows and run in parallel, and K slot rows
    # (briefd/cluster/slots.py) that keep the global cap without a global lock. The one
    # row of version 2 becomes the 'default' endpoint's (BRIEFD_BASE_URL's) and keeps K;
    # waits and leases of version 2 are the 'default' endpoint's, and the live leases
    # take slots (more of them than K: the extra slots go as their leases end).
    3: (
        """CREATE TABLE briefd_limiter_endpoints (
            endpoint        text PRIMARY KEY,
            ceiling         integer NOT NULL,
            max_concurrent  integer,
            adaptive        boolean NOT NULL DEFAULT true,
            w               float8 NOT NULL,
            epoch           bigint NOT NULL DEFAULT 0,
            cuts            bigint NOT NULL DEFAULT 0,
            rpm             float8,
            tpm             float8,
            rpm_tat         float8 NOT NULL DEFAULT 0,
            tpm_tat         float8 NOT NULL DEFAULT 0,
            pause_until     float8 NOT NULL DEFAULT 0,
            cooldown_until  float8 NOT NULL DEFAULT 0,
            pauses          bigint NOT NULL DEFAULT 0,
            rate_limited    bigint NOT NULL DEFAULT 0,
            granted_total   bigint NOT NULL DEFAULT 0,
            reclaimed_total bigint NOT NULL DEFAULT 0,
            latencies       text NOT NULL DEFAULT '{}',
            set_by          text,
            starved         boolean NOT NULL DEFAULT false
        )""",
        """COMMENT ON TABLE briefd_limiter_endpoints IS
            'each endpoint''s window, budgets and cool-down; times: epoch s'""",
        """COMMENT ON COLUMN briefd_limiter_endpoints.starved IS
            'its last grant round stopped for want of a free slot (K reached)'""",
        """COMMENT ON TABLE briefd_limiter IS
            'the cluster''s K (ceiling), adaptive and who set them; the rest: schema 2''s'""",
        """INSERT INTO briefd_limiter_endpoints (endpoint, ceiling, adaptive, w, epoch, cuts,
            rpm, tpm, rpm_tat, tpm_tat, pause_until, cooldown_until, pauses, rate_limited,
            granted_total, reclaimed_total, latencies, set_by)
        SELECT 'default', ceiling, adaptive, w, epoch, cuts, rpm, tpm, rpm_tat, tpm_tat,
            pause_until, cooldown_until, pauses, rate_limited, granted_total,
            reclaimed_total, latencies, set_by FROM briefd_limiter""",
        "ALTER TABLE briefd_token_waits ADD COLUMN endpoint text NOT NULL DEFAULT 'default'",
        "ALTER TABLE briefd_tokens ADD COLUMN endpoint text NOT NULL DEFAULT 'default'",
        "ALTER TABLE briefd_tokens ADD COLUMN slot integer",
        """CREATE TABLE briefd_token_slots (
            slot     integer PRIMARY KEY,
            lease_id bigint,
            doomed   boolean NOT NULL DEFAULT false
        )""",
        """COMMENT ON TABLE briefd_token_slots IS
            'K slots: a lease holds one (lease_id), so never more than K leases live'""",
        # No index but the key: taking and freeing a slot are HOT updates, pruned in place,
        # so the small table does not grow with dead rows between vacuums.
        """COMMENT ON COLUMN briefd_token_slots.doomed IS
            'K was lowered under the live leases: the slot goes when its lease ends'""",
        """UPDATE briefd_tokens t SET slot = n.rn FROM (
            SELECT lease_id, row_number() OVER (ORDER BY lease_id) AS rn FROM briefd_tokens
        ) n WHERE t.lease_id = n.lease_id""",
        """INSERT INTO briefd_token_slots (slot, doomed)
        SELECT s, s > coalesce((SELECT ceiling FROM briefd_limiter), 0)
        FROM generate_series(1, greatest(
            coalesce((SELECT ceiling FROM briefd_limiter), 0),
            (SELECT count(*) FROM briefd_tokens))::integer) AS s""",
        """UPDATE briefd_token_slots s SET lease_id = t.lease_id
        FROM briefd_tokens t WHERE t.slot = s.slot""",
        # Every way a lease ends (release, reap, cancel, a daemon leaving, a DELETE by
        # hand) frees its slot here, in the same transaction. A doomed slot goes with its
        # lease; a free slot while another doomed one still holds a call goes in its place
        # (that one is kept), so the calls in flight fall to the new K before any is added.
        """CREATE FUNCTION briefd_free_slot() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.slot IS NULL THEN
                RETURN NULL;
            END IF;
            UPDATE briefd_token_slots SET lease_id = NULL WHERE slot = OLD.slot AND NOT doomed;
            IF NOT FOUND THEN
                DELETE FROM briefd_token_slots WHERE slot = OLD.slot;
                RETURN NULL;
            END IF;
            IF EXISTS (SELECT 1 FROM briefd_token_slots WHERE doomed) THEN
                UPDATE briefd_token_slots SET doomed = false WHERE slot = (
                    SELECT slot FROM briefd_token_slots WHERE doomed
                    ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED);
                IF FOUND THEN
                    DELETE FROM briefd_token_slots WHERE slot = OLD.slot;
                END IF;
            END IF;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER briefd_tokens_free_slot AFTER DELETE ON briefd_tokens
            FOR EACH ROW EXECUTE PROCEDURE briefd_free_slot()""",
    ),
    # Version 4: the webhook outbox (briefd/webhooks/pg_outbox.py): one row per delivery,
    # written in the transaction of the event it reports, claimed FOR UPDATE SKIP LOCKED.
    # Also: a job keeps the pipeline version it was accepted with, and its templated prompts
    # as rendered (briefd/store/pinned.py), so a resume runs what it started with.
    # Also: each job's events in order, streamed and replayed by GET /v1/jobs/{id}/events
    # (briefd/store/events.py, briefd/store/pg_events.py). No foreign key there: the events
    # are inserted last in their transaction, after an advisory lock, and a key check would
    # lock the job's row after it.
    4: (
        """CREATE TABLE briefd_webhooks (
            id           text PRIMARY KEY,
            job_id       text NOT NULL REFERENCES briefd_jobs (job_id) ON DELETE CASCADE,
            event        text NOT NULL,
            payload      text NOT NULL,
            url          text NOT NULL,
            state        text NOT NULL DEFAULT 'pending',
            attempts     integer NOT NULL DEFAULT 0,
            next_at      timestamptz NOT NULL DEFAULT now(),
            claimed_by   text,
            last_status  integer,
            last_error   text,
            delivered_at timestamptz,
            created_at   timestamptz NOT NULL DEFAULT now()
        )""",
        "COMMENT ON COLUMN briefd_webhooks.id IS 'the webhook-id header, on every attempt'",
        "COMMENT ON COLUMN briefd_webhooks.next_at IS 'due; while claimed, when the claim lapses'",
        "CREATE INDEX briefd_webhooks_due ON briefd_webhooks (next_at) WHERE state = 'pending'",
        "CREATE INDEX briefd_webhooks_by_job ON briefd_webhooks (job_id, created_at)",
        *PG_MIGRATION,
        """CREATE TABLE briefd_events (
            id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id text NOT NULL,
            seq    integer NOT NULL,
            type   text NOT NULL,
            ts     double precision NOT NULL,
            data   text NOT NULL,
            UNIQUE (job_id, seq)
        )""",
        "COMMENT ON COLUMN briefd_events.seq IS 'the job''s own order, 1..n: the SSE id'",
        # Tenants and their API keys (briefd/tenants/schema.py), and the keys' HMAC secret.
        *TENANT_STATEMENTS,
        # The tenants' fair share (briefd/limits/fair.py): each wait and lease names its
        # tenant and weight, and each endpoint's row keeps the tenants' virtual times, so
        # every daemon's grant round picks the tenant by the same tags under the row's lock.
        """ALTER TABLE briefd_token_waits ADD COLUMN tenant text NOT NULL DEFAULT 'default',
            ADD COLUMN weight float8 NOT NULL DEFAULT 1""",
        """ALTER TABLE briefd_tokens ADD COLUMN tenant text NOT NULL DEFAULT 'default',
            ADD COLUMN weight float8 NOT NULL DEFAULT 1,
            ADD COLUMN charged float8 NOT NULL DEFAULT 0""",
        """COMMENT ON COLUMN briefd_tokens.charged IS
            'tokens its tenant''s fair share was charged at the grant (settled at release)'""",
        "ALTER TABLE briefd_limiter_endpoints ADD COLUMN fair_share text",
        """COMMENT ON COLUMN briefd_limiter_endpoints.fair_share IS
            'the tenants'' start-time fair queuing tags (JSON: V, finish tags, last grants)'""",
    ),
}


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return urlsplit(url.strip()).scheme.lower() in SCHEMES


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) as ``***``."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in pairs):
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="/*"
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    rest = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{rest}"


def _passwords(url: str) -> list[str]:
    """The secrets in ``url``, for the log redaction registry."""
    parts = urlsplit(url)
    found = [] if parts.password is None else [parts.password, unquote(parts.password)]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    return found


def unavailable(err: psycopg.Error) -> bool:
    """A failure of the server or the link to it (made again later), not of briefd's SQL."""
    return isinstance(err, psycopg.OperationalError | psycopg.errors.ReadOnlySqlTransaction)


def contended(err: psycopg.Error) -> bool:
    """A lock or statement that passed the session's bound (another session held the rows,
    or a deadline was given), or a deadlock PostgreSQL broke (two daemons' operations on two
    endpoints' rows in opposite orders): try again, the server itself is fine."""
    return isinstance(
        err,
        psycopg.errors.LockNotAvailable
        | psycopg.errors.QueryCanceled
        | psycopg.errors.DeadlockDetected,
    )


def one_line(err: BaseException) -> str:
    """A driver message on one line (libpq's span several), any password in it redacted."""
    return redact(" ".join(str(err).split()))


def session_bounds(bound_s: float) -> dict[str, str]:
    """The server-side settings of every briefd session, from one bound (``db_timeout``).

    PostgreSQL itself ends what a paused, frozen or cut-off daemon holds, whatever its
    process does: a statement running longer than the bound (``statement_timeout``),
    a lock waited for longer (``lock_timeout``: the waiter fails and tries again, it
    does not wait on a paused daemon), and a transaction left open and idle longer
    (``idle_in_transaction_session_timeout``: the session is ended and its row locks
    freed; the limiter's row lock of a paused daemon is the case that froze a cluster).
    The server's TCP settings notice a client host gone silent within the bound too.
    """
    ms = str(max(1, round(bound_s * 1000)))
    return {
        "lock_timeout": ms,
        "statement_timeout": ms,
        "idle_in_transaction_session_timeout": ms,
        "tcp_keepalives_idle": str(max(1, int(bound_s / 2))),
        "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": str(max(1, int(bound_s / 2))),
        "tcp_user_timeout": ms,
    }


def client_bounds(url: str, bound_s: float) -> dict[str, Any]:
    """libpq connection parameters that notice a silent server within about ``bound_s``
    (TCP keepalives, ``tcp_user_timeout``, a connect timeout), unless the URL sets its own.
    Without them a daemon cut off from the database waits in a read for minutes (the
    kernel's defaults), holding its actor; with them the read fails and it says so."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        given = {}
    wanted: dict[str, Any] = {
        "application_name": "briefd",
        "connect_timeout": max(2, math.ceil(2 * bound_s)),
        "keepalives": 1,
        "keepalives_idle": max(1, int(bound_s / 2)),
        "keepalives_interval": 1,
        "keepalives_count": max(1, int(bound_s / 2)),
        "tcp_user_timeout": max(1, round(bound_s * 1000)),
    }
    return {k: v for k, v in wanted.items() if k not in given}


def open_pool(
    url: str, *, max_size: int, timeout_s: float, bound_s: float = DEFAULT_BOUND_S
) -> ConnectionPool:
    """An open pool to ``url`` (a first connection made); ConfigError, one line, if it cannot.

    Every connection is bounded by ``bound_s`` on both sides (:func:`session_bounds`,
    :func:`client_bounds`) and in autocommit mode: a one-statement write (a renewal,
    a claim) is its own transaction, committed by the server as the statement ends, so
    its row locks never outlive it even if this process is paused right after; work of
    several statements opens a transaction explicitly (``conn.transaction()``).
    """
    for secret in _passwords(url):
        register_secret(secret)
    where = redact_url(url)
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as err:
        raise ConfigError(f"BRIEFD_DATABASE_URL {where}: {one_line(err)}") from None
    kwargs = {**client_bounds(url, bound_s), "autocommit": True}
    bounds = session_bounds(bound_s)

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute(  # only those the server knows (tcp_user_timeout: PostgreSQL 12+)
            "SELECT set_config(v.name, v.value, false) "
            "FROM unnest(%s::text[], %s::text[]) AS v(name, value) "
            "JOIN pg_settings s ON s.name = v.name",
            (list(bounds), list(bounds.values())),
        )

    try:  # once by hand, to fail at once and with libpq's reason (the pool would retry)
        psycopg.connect(url, **{**kwargs, "connect_timeout": max(1, round(timeout_s))}).close()
    except psycopg.Error as err:
        raise ConfigError(f"BRIEFD_DATABASE_URL {where}: cannot connect: {one_line(err)}") from None
    pool = ConnectionPool(
        url,
        kwargs=kwargs,
        min_size=1,
        max_size=max_size,
        open=False,
        configure=configure,
        check=ConnectionPool.check_connection,
        timeout=timeout_s,
        name="briefd-journal",
    )
    try:
        pool.open(wait=True, timeout=timeout_s)
    except psycopg.Error as err:
        pool.close()
        raise ConfigError(
            f"BRIEFD_DATABASE_URL {where}: cannot connect within {timeout_s:g}s ({one_line(err)})"
        ) from None
    return pool


def open_schema_pool(
    url: str, *, max_size: int, timeout_s: float, bound_s: float = DEFAULT_BOUND_S
) -> ConnectionPool:
    """:func:`open_pool`, then the schema made or upgraded (:func:`ensure_schema`) on one of
    its connections: what every part of briefd that uses the database starts with."""
    pool = open_pool(url, max_size=max_size, timeout_s=timeout_s, bound_s=bound_s)
    try:
        with pool.connection() as conn:
            ensure_schema(conn, redact_url(url))
    except BaseException:
        pool.close()
        raise
    return pool


def ensure_schema(conn: psycopg.Connection[Any], where: str) -> int:
    """Make or upgrade the schema to :data:`SCHEMA_VERSION`, once whoever races; the version
    found. ConfigError if the database holds a newer one or refuses the DDL."""
    try:
        with conn.transaction():
            conn.execute(  # another daemon may be making it: wait for it, not the usual bound
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('statement_timeout', %s, true)",
                (str(SCHEMA_BOUND_MS), str(SCHEMA_BOUND_MS)),
            )
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            row = conn.execute("SELECT to_regclass('briefd_schema') IS NOT NULL").fetchone()
            found = 0
            if row is not None and row[0]:
                top = conn.execute("SELECT max(version) FROM briefd_schema").fetchone()
                found = int(top[0]) if top is not None and top[0] is not None else 0
            if found > SCHEMA_VERSION:
                raise ConfigError(
                    f"database {where}: schema version {found} is newer than this briefd's "
                    f"({SCHEMA_VERSION}): run a briefd at least as new as the one that wrote it"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO briefd_schema (version, applied_by) VALUES (%s, %s)",
                    (version, f"briefd {briefd.__version__}"),
                )
    except psycopg.Error as err:
        raise ConfigError(f"database {where}: cannot prepare the schema: {one_line(err)}") from None
    return found
