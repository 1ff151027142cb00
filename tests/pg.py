"""A throwaway PostgreSQL server for tests, and a fresh database for each test that asks.

The PostgreSQL store is tested against a real server, not a mock: row locks,
``ON CONFLICT`` and transactional DDL are what it relies on. The server is made
from Debian's binaries (``/usr/lib/postgresql/*/bin``; ``.ci/setup`` installs
them) once per session, in a temporary folder:

* as a user other than root, because PostgreSQL refuses to run as root and the
  tests run as root: ``postgres`` (Debian's package makes it), else ``nobody``,
  else a system user made for it. ``subprocess`` switches user in the child, so
  no ``su``/``runuser`` is needed;
* on a Unix socket in that folder only (``listen_addresses=''``): nothing
  listens on any TCP port, loopback or not;
* with ``fsync=off``: a test server's data need not survive a power cut.

It is stopped (``pg_ctl stop -m immediate``) and its folder removed at the end
of the session. Missing binaries fail the test loudly instead of skipping it:
a store nobody tests is a store that breaks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVER_USERS = ("postgres", "nobody")
"""Who runs the server when the tests run as root, first found wins."""
MADE_USER = "briefd-pg"
"""The system user made when none of :data:`SERVER_USERS` exists."""
START_TIMEOUT_S = 60


def server_bindir() -> Path:
    """The newest installed PostgreSQL's ``bin`` folder; fails the test if there is none."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    pytest.fail(
        "PostgreSQL's server binaries are missing (no /usr/lib/postgresql/*/bin/initdb, no "
        "initdb on PATH): run .ci/setup as root, or apt-get install postgresql",
        pytrace=False,
    )


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None when the tests are not root (then they run it themselves)."""
    if os.geteuid() != 0:
        return None
    for name in (*SERVER_USERS, MADE_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", MADE_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(MADE_USER)


class PgServer:
    """One PostgreSQL server in ``root`` (data in ``root/data``, the socket in ``root``)."""

    def __init__(self, bindir: Path, root: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self._user = user
        self.started_in_s = 0.0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A server binary, run as the server's user, its output captured for the error."""
        extra: dict[str, Any] = {}
        if self._user is not None:
            extra = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=START_TIMEOUT_S + 10,
            **extra,
        )

    def _must(self, *args: str) -> None:
        done = self._run(*args)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(
                f"throwaway PostgreSQL: {' '.join(args[:2])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{tail}",
                pytrace=False,
            )

    def start(self) -> None:
        """initdb, then start on the socket only; waits until it accepts connections."""
        began = time.monotonic()
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._must(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        options = (
            f"-k {self.root} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._must(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        self.started_in_s = time.monotonic() - began

    def stop(self) -> None:
        """Stop at once (nothing here is worth a checkpoint) and remove the folder."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL to ``dbname`` over the socket, as the ``postgres`` superuser."""
        return f"postgresql://postgres@/{dbname}?host={self.root}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg  # here, so that collecting the other tests never needs psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.encode())


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's throwaway PostgreSQL server (started on first use)."""
    bindir = server_bindir()
    user = server_user()
    base = "/tmp" if os.path.isdir("/tmp") else None  # reachable by the server's user
    server = PgServer(bindir, Path(tempfile.mkdtemp(prefix="briefd-pg-", dir=base)), user)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A URL to a database of this test's own, dropped after it (connections and all)."""
    name = f"briefd_test_{uuid.uuid4().hex[:12]}"
    pg_server.admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.url(name)
    finally:
        pg_server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
