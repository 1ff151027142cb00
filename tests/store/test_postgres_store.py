"""What only the PostgreSQL store has to get right: its schema, its URL, its server going away,
and writes racing from several connections. (The Store promises are test_store_contract.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg import PgServer

from briefd.config import ConfigError, PipelineSpec, Settings
from briefd.messages import JobSpec, StageState
from briefd.store import open_store
from briefd.store.base import StoreUnavailable
from briefd.store.pg_setup import SCHEMA_VERSION, is_postgres_url, redact_url
from briefd.store.postgres import PostgresStore
from briefd.store.sqlite import Journal

from .conftest import until as _until

SECRET = "s3cret-pw"


def _with_password(url: str) -> str:
    """The same URL with a password (the throwaway server trusts, so it is never checked)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")


@pytest.fixture
def stores(pg_url: str, pipeline: PipelineSpec, tmp_path: Path) -> Iterator[Any]:
    """``stores(**kw)``: PostgresStores on the test's database, closed after it."""
    opened: list[PostgresStore] = []

    def make(**kw: Any) -> PostgresStore:
        store = PostgresStore(pg_url, pipeline, jobs_dir=tmp_path / "jobs", **kw)
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


def test_daemons_starting_together_make_the_schema_once(
    stores: Any, admin: psycopg.Connection[Any]
) -> None:
    start = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_one() -> None:
        try:
            start.wait(timeout=10)
            stores()
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and not any(t.is_alive() for t in threads)
    versions = admin.execute(
        "SELECT version, applied_by FROM briefd_schema ORDER BY version"
    ).fetchall()
    assert [v for v, _ in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert all(by.startswith("briefd ") for _, by in versions)
    columns = {
        r[0]
        for r in admin.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name='briefd_jobs'"
        )
    }
    assert {"claimed_by", "lease_until", "fence"} <= columns, "the claim columns"
    assert admin.execute("SELECT to_regclass('briefd_fence')").fetchone() == ("briefd_fence",)


def test_a_newer_schema_is_refused_in_one_line_without_the_password(
    stores: Any, admin: psycopg.Connection[Any], pg_url: str, pipeline: PipelineSpec, tmp_path: Path
) -> None:
    stores().close()
    admin.execute("INSERT INTO briefd_schema (version, applied_by) VALUES (99, 'briefd 9')")
    with pytest.raises(ConfigError) as err:
        PostgresStore(_with_password(pg_url), pipeline, jobs_dir=tmp_path)
    message = str(err.value)
    assert f"schema version 99 is newer than this briefd's ({SCHEMA_VERSION})" in message
    assert "\n" not in message and SECRET not in message and "postgres:***@" in message


def test_an_unreachable_server_stops_the_start_naming_the_url_redacted(
    tmp_path: Path, pipeline: PipelineSpec
) -> None:
    url = f"postgresql://briefd:{SECRET}@/briefd?host={tmp_path}/no-server"
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    began = time.monotonic()
    with pytest.raises(ConfigError) as err:
        open_store(settings, pipeline)
    assert time.monotonic() - began < 10
    message = str(err.value)
    assert message.startswith("BRIEFD_DATABASE_URL postgresql://briefd:***@/briefd?host=")
    assert "cannot connect" in message and SECRET not in message and "\n" not in message


def test_open_store_picks_the_backend_from_the_settings(
    pg_url: str, pipeline: PipelineSpec, tmp_path: Path
) -> None:
    sqlite = open_store(Settings(data_dir=tmp_path / "a"), pipeline)
    postgres = open_store(Settings(data_dir=tmp_path / "b", database_url=pg_url), pipeline)
    try:
        assert isinstance(sqlite, Journal) and isinstance(postgres, PostgresStore)
        assert sqlite.files.jobs_dir == tmp_path / "a" / "jobs"
        assert postgres.files.jobs_dir == tmp_path / "b" / "jobs"
    finally:
        sqlite.close()
        postgres.close()


def test_the_url_setting_is_checked_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"postgresql://briefd:{SECRET}@db.internal:5433/briefd?sslmode=require"
    monkeypatch.setenv("BRIEFD_DATABASE_URL", url)
    settings = Settings.load()
    assert settings.database_url == url
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    monkeypatch.setenv("BRIEFD_DATABASE_URL", "")
    assert Settings.load().database_url is None, "empty means unset"
    monkeypatch.setenv("BRIEFD_DATABASE_URL", f"mysql://briefd:{SECRET}@db/briefd")
    with pytest.raises(ConfigError) as err:
        Settings.load()
    assert "BRIEFD_DATABASE_URL: must be a postgresql:// URL (got mysql://...)" in str(err.value)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p%40ss:w@h/db", "postgresql://u:***@h/db"),
        ("postgres://u@h/db?password=pw&sslmode=require", "postgres://u@h/db?password=***&sslmode=require"),
        ("postgresql:///db?host=/run/pg", "postgresql:///db?host=/run/pg"),
    ],
)  # fmt: skip
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown and is_postgres_url(url)
    assert not is_postgres_url("sqlite:///x.db") and not is_postgres_url("/var/lib/briefd")


def test_a_stage_write_waiting_on_a_concurrent_end_changes_nothing(
    stores: Any, admin: psycopg.Connection[Any], make_job: Any, tmp_path: Path
) -> None:
    """Another daemon ends the job while this one writes a stage: the write waits for the
    row lock, then sees the job terminal, and neither the row nor a file is written."""
    store = stores()
    store.add_job(JobSpec.model_validate(make_job("race")))
    store.start_run("race")
    other = psycopg.connect(admin.info.dsn)
    try:
        other.execute("SELECT 1 FROM briefd_jobs WHERE job_id='race' FOR UPDATE")
        writer = threading.Thread(
            target=store.stage_succeeded, args=("race", "BRIEFING_MD", "# late", 1)
        )
        writer.start()
        _until(
            lambda: (
                admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).fetchone()
                == (1,)
            )
        )
        other.execute("UPDATE briefd_jobs SET state='cancelled' WHERE job_id='race'")
        other.commit()
        writer.join(timeout=10)
        assert not writer.is_alive()
    finally:
        other.close()
    info = store.get("race")
    assert info is not None and info.stages["BRIEFING_MD"] is StageState.PENDING
    assert not (tmp_path / "jobs" / "race" / "briefing.md").exists()


def test_a_lost_server_is_reported_and_its_return_noticed(
    stores: Any, admin: psycopg.Connection[Any], make_job: Any, pg_server: PgServer
) -> None:
    """Connections cut (a restart, a failover) are replaced unseen; a database that refuses
    connections raises StoreUnavailable, shows on /healthz, and clears once it is back."""
    store = stores(timeout_s=1.0)
    store.add_job(JobSpec.model_validate(make_job("j-1")))
    cut = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    dbname = admin.info.dbname
    admin.execute(cut, (dbname,))
    assert store.get("j-1") is not None, "a cut connection is replaced"
    pg_server.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    admin.execute(cut, (dbname,))
    try:
        with pytest.raises(StoreUnavailable) as err:
            store.add_job(JobSpec.model_validate(make_job("j-2")))
        assert "postgres@" in str(err.value)
        problem = store.write_problem()
        assert problem is not None and problem.startswith("journal: postgresql://postgres@/")
    finally:
        pg_server.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    _until(lambda: store.write_problem() is None)
    assert store.add_job(JobSpec.model_validate(make_job("j-2")))[1]


def test_the_throwaway_server_listens_on_its_socket_only(
    admin: psycopg.Connection[Any], pg_server: PgServer
) -> None:
    assert admin.execute("SHOW listen_addresses").fetchone() == ("",)
    assert admin.execute("SHOW unix_socket_directories").fetchone() == (str(pg_server.root),)
    owner = admin.execute("SELECT usesuper FROM pg_user WHERE usename = current_user").fetchone()
    assert owner == (True,) and pg_server.data.stat().st_uid != 0, "not run as root"
