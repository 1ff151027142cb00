"""Faults for the chaos suite, and the checks that read what a cluster did under them.

The chaos tests (``tests/cluster/test_chaos_*.py``) and ``bench/bench_chaos.py`` run real
``briefd serve`` processes (:class:`daemon_helpers.Daemon`) on the throwaway PostgreSQL
(``tests/pg.py``) and break things the way production does:

* :class:`PgProxy`: a TCP proxy on 127.0.0.1 between one daemon and the server's Unix
  socket that passes, **drops** (a blackhole: nothing is forwarded either way, every socket
  stays open, new connections hang) or **resets** (every connection cut, new ones refused);
* :func:`pause_holding`: SIGSTOP a daemon at a chosen point (while its transaction holds the
  limiter row, or its claims' rows during a renewal), landed deterministically: the test
  holds the row itself, waits until the daemon's backend queues behind it, stops the daemon,
  lets the row go and checks with ``pgrowlocks`` that the stopped daemon's backend got it;
* :func:`stop_server` / :func:`start_server`: PostgreSQL really down, then up again.

Each daemon gets a simulated OpenAI server of its own (:class:`Member`), so the request log
says which daemon made each call, when (``time.monotonic`` of this process, turned into Unix
time), for which job and stage (briefd's ``X-Briefd-Job`` / ``X-Briefd-Stage`` headers).
Each daemon's connections carry ``application_name=chaos-<name>``, so ``pg_stat_activity``
says which backend is whose.

The checks (:class:`Record`) are the issue's: every job ends exactly once across the logs;
no call is started by a daemon whose claim another daemon replaced; no stage is called after
its document was committed; the longest time the rest of the cluster made no call.
"""

from __future__ import annotations

import contextlib
import selectors
import shlex
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
from daemon_helpers import HTTP, Daemon, make_job, wait_for
from pg import PgServer

from briefd.sim.server import RequestRecord, SimProfile, SimServer

TERMINAL = ("succeeded", "partial", "failed", "cancelled")
MONO_TO_WALL = time.time() - time.monotonic()
"""Add to this process's ``time.monotonic()`` (the simulator's clock) to get Unix time."""


LIMITER_ROW: dict[str, str] = {
    "table": "briefd_limiter_endpoints",
    "lock_sql": "SELECT 1 FROM briefd_limiter_endpoints WHERE endpoint = 'default' FOR UPDATE",
    "query_has": "briefd_limiter_endpoints",
}
"""Where a grant round for the one ``BRIEFD_BASE_URL`` endpoint locks (schema 3: one row per
endpoint), for :func:`pause_holding` / :func:`act_holding` to land a fault while it is held."""


def wall(mono: float) -> float:
    return mono + MONO_TO_WALL


# -- the database -------------------------------------------------------------------------


def rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement on a connection of our own (autocommit)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql.encode(), args).fetchall())


def socket_path(server: PgServer) -> Path:
    """The server's Unix socket (it listens on no TCP port)."""
    return server.root / ".s.PGSQL.5432"


def _server_options(server: PgServer) -> str:
    """The ``-o`` options the running server was started with (from ``postmaster.opts``)."""
    words = shlex.split((server.data / "postmaster.opts").read_text())
    return " ".join(shlex.quote(w) for w in words[1:] if w not in ("-D", str(server.data)))


def stop_server(server: PgServer, mode: str = "fast") -> str:
    """Stop PostgreSQL (``fast``: sessions ended cleanly; ``immediate``: as a crash); the
    options to start it again with."""
    options = _server_options(server)
    done = server._run("pg_ctl", "-D", str(server.data), "-m", mode, "-w", "stop")
    assert done.returncode == 0, done.stderr
    return options


def start_server(server: PgServer, options: str) -> None:
    """Start PostgreSQL again, as it was, and wait until it accepts connections."""
    done = server._run(
        "pg_ctl", "-D", str(server.data), "-o", options, "-l", str(server.log), "-w", "start"
    )
    assert done.returncode == 0, done.stderr


# -- a proxy that can cut one daemon off ----------------------------------------------------


class PgProxy:
    """TCP on 127.0.0.1 -> the server's Unix socket; ``mode`` is ``pass``, ``drop`` or
    ``reset`` and can change at any time.

    ``drop`` is a partition as a firewall makes it: bytes already sent stay unanswered,
    nothing reaches either side, and both ends keep their sockets (PostgreSQL sees an idle
    client; the daemon sees a server that never answers). A connection made while dropping
    is accepted by the kernel but never forwarded. ``reset`` cuts every connection at once
    (the daemon reads ECONNRESET, the server an end of file) and resets each new one.
    Back to ``pass``, connections that survived a drop carry on where they stopped.
    """

    def __init__(self, target: Path) -> None:
        self.target = str(target)
        self.mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connections = 0

    def url(self, dbname: str, **params: str) -> str:
        query = urlencode({"sslmode": "disable", **params})
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}?{query}"

    def __enter__(self) -> PgProxy:
        t = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _close(a, b)

    def set(self, mode: str) -> None:
        """``pass``, ``drop`` or ``reset`` from now on (``reset`` cuts every connection now)."""
        assert mode in ("pass", "drop", "reset"), mode
        self.mode = mode
        if mode == "reset":
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for a, b in pairs:
                _reset(a)
                _close(a, b)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                _reset(client)
                client.close()
                continue
            if self.mode == "drop":
                # A blackhole: keep it open, forward nothing; the daemon's connect times out.
                with self._lock:
                    self._pairs.append((client, client))
                continue
            try:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
            except OSError:  # the server is down: as the server itself would, refuse
                _reset(client)
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._pairs.append((client, upstream))
            t = threading.Thread(
                target=self._pump, args=(client, upstream), name="pg-proxy-pump", daemon=True
            )
            t.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
        except (OSError, ValueError):
            return
        try:
            while not self._stop.is_set():
                if self.mode == "drop":  # leave the bytes where they are
                    self._stop.wait(0.02)
                    continue
                for key, _ in sel.select(0.05):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                        if not data:
                            raise OSError("closed")
                        key.data.sendall(data)
                    except OSError:
                        _close(client, upstream)
                        return
                if client.fileno() < 0 or upstream.fileno() < 0:
                    return
        finally:
            sel.close()


def _reset(s: socket.socket) -> None:
    """Close with RST, not FIN (SO_LINGER 0), as a reset connection ends."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


# -- a cluster: daemons, each with its own simulated server ---------------------------------


@dataclass
class Member:
    """One daemon of a chaos cluster and the simulated server only it calls."""

    name: str
    daemon: Daemon
    sim: SimServer
    proxy: PgProxy | None = None
    daemon_id: str = ""

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def pause(self) -> None:
        self.daemon.signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.signal(signal.SIGCONT)

    def calls(self) -> list[RequestRecord]:
        return self.sim.stats().requests

    def busy(self) -> bool:
        """A call of this daemon's is on the wire now."""
        return self.sim.stats().in_flight > 0


@dataclass
class Cluster:
    """``briefd serve`` daemons on one database; each daemon's own simulator."""

    url: str
    dbname: str
    members: list[Member] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def by_name(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def submit(self, job_ids: Iterable[str]) -> None:
        """Submit through the members in turn (acknowledged, or the test fails)."""
        clients = [m.daemon.client() for m in self.members]
        for n, job_id in enumerate(job_ids):
            clients[n % len(clients)].submit(make_job(job_id))

    def states(self) -> dict[str, str]:
        return dict(rows(self.url, "SELECT job_id, state FROM briefd_jobs"))

    def all_ended(self, job_ids: Iterable[str], timeout_s: float) -> bool:
        wanted = set(job_ids)

        def ended() -> bool:
            states = self.states()
            return all(states.get(j) in TERMINAL for j in wanted)

        return bool(wait_for(ended, timeout_s, 0.2))

    def holdings(self) -> dict[str, list[str]]:
        """Member name -> the live jobs its daemon holds a claim on now."""
        out: dict[str, list[str]] = {m.name: [] for m in self.members}
        names = {m.daemon_id: m.name for m in self.members}
        for job_id, owner in rows(
            self.url,
            "SELECT job_id, claimed_by FROM briefd_jobs "
            "WHERE state IN ('queued','running') AND claimed_by IS NOT NULL ORDER BY job_id",
        ):
            if owner in names:
                out[names[owner]].append(job_id)
        return out

    def record(self) -> Record:
        return Record.of(self)

    def queued(self) -> int:
        """Jobs submitted that no daemon has claimed yet."""
        return int(
            rows(
                self.url,
                "SELECT count(*) FROM briefd_jobs WHERE state = 'queued' AND claimed_by IS NULL",
            )[0][0]
        )


class Feeder:
    """Keeps ``depth`` jobs waiting, unclaimed, from entering until leaving the block: a load
    that lasts exactly as long as a fault, so the cluster never runs out of work during it
    and has little left to finish after it. Submits through ``via`` in turn."""

    def __init__(self, c: Cluster, via: Iterable[Member], prefix: str, depth: int = 1) -> None:
        self._cluster = c
        self._clients = [m.daemon.client() for m in via]
        self._prefix, self._depth = prefix, depth
        self.jobs: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        for _ in range(self._depth):
            self._one()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _one(self) -> None:
        job_id = f"{self._prefix}-{len(self.jobs):03d}"
        self._clients[len(self.jobs) % len(self._clients)].submit(make_job(job_id))
        self.jobs.append(job_id)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self._cluster.queued() < self._depth:
                self._one()


@contextlib.contextmanager
def cluster(
    server: PgServer,
    url: str,
    tmp: Path,
    names: Iterable[str] = ("a", "b", "c"),
    *,
    proxied: Iterable[str] = (),
    scale: float = 0.05,
    **settings: Any,
) -> Iterator[Cluster]:
    """Start the daemons (``settings`` as in :class:`Daemon`), each on its own simulator;
    those in ``proxied`` reach the database through a :class:`PgProxy`. Teardown resumes a
    paused daemon and kills every one (SIGKILL: the test has read its logs already)."""
    dbname = urlsplit(url).path.lstrip("/")
    c = Cluster(url=url, dbname=dbname)
    with c.stack:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(b"CREATE EXTENSION IF NOT EXISTS pgrowlocks")
            # The session's server runs with synchronous_commit=off, where a crash loses the
            # last commits: acknowledged releases and claims would come back from the dead.
            # A real server keeps what it acknowledged, so this database does too.
            conn.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = on'.encode())
        for name in names:
            sim = c.stack.enter_context(SimServer(SimProfile(scale=scale)))
            proxy = None
            if name in proxied:
                proxy = c.stack.enter_context(PgProxy(socket_path(server)))
                db_url = proxy.url(dbname, application_name=f"chaos-{name}")
            else:
                sep = "&" if "?" in url else "?"
                db_url = f"{url}{sep}application_name=chaos-{name}"
            folder = tmp / name
            folder.mkdir()
            d = Daemon(
                folder,
                sim.base_url,
                database_url=db_url,
                log_level="DEBUG",
                log_file=folder / "events.log",  # what `briefd console --log` reads
                **settings,
            )
            c.members.append(Member(name, d, sim, proxy))
        try:
            for m in c.members:  # all at once: each start is a second and more of imports
                m.daemon.proc = m.daemon.spawn(m.daemon.command())
            for m in c.members:
                m.daemon.wait_ready(30)
                started = poll(lambda d=m.daemon: d.events("DaemonStarted"), 10, "DaemonStarted")
                m.daemon_id = started[0]["daemon_id"]
            yield c
        finally:
            for m in c.members:
                m.resume()
                if m.proxy is not None:
                    m.proxy.set("pass")
            for m in c.members:  # read what it needs already; a graceful stop is not under test
                m.daemon.kill()


# -- pausing a daemon at a chosen point -----------------------------------------------------


def backends(url: str, member: Member) -> list[dict[str, Any]]:
    """The member's database sessions now (pid, state, wait, query)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT pid, state, wait_event_type, wait_event, query, xact_start IS NOT NULL "
            "FROM pg_stat_activity WHERE application_name = %s",
            (f"chaos-{member.name}",),
        )
        keys = ("pid", "state", "wait_type", "wait", "query", "in_tx")
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]


def lockers(url: str, table: str) -> set[int]:
    """Backend pids holding a row lock on ``table`` now (``pgrowlocks``)."""
    found: set[int] = set()
    for (pids,) in rows(url, f"SELECT pids FROM pgrowlocks('{table}')"):
        found.update(pids or [])
    return found


def pause_holding(url: str, member: Member, **where: Any) -> float:
    """SIGSTOP ``member`` while its transaction holds rows (:func:`act_holding`)."""
    return act_holding(url, member, member.pause, member.resume, **where)


def act_holding(
    url: str,
    member: Member,
    act: Callable[[], None],
    undo: Callable[[], None],
    *,
    table: str,
    lock_sql: str,
    query_has: str,
    lock_args: tuple[Any, ...] = (),
    prove: bool = True,
    tries: int = 20,
    wait_s: float = 8.0,
) -> float:
    """Do ``act`` to ``member`` (stop it, cut it off) while its transaction holds the rows
    ``lock_sql`` locks, landed deterministically.

    The test locks those rows itself, waits until one of the member's backends queues
    behind the lock with a statement containing ``query_has``, acts, then lets the rows go:
    the queued backend takes them, for a daemon that can no longer finish its transaction.
    ``pgrowlocks`` proves it (another daemon may have queued first: then ``undo`` and
    again). ``prove=False``: the act lands while the statement is in flight, whatever it
    holds afterwards (a one-statement transaction commits by itself: nothing). The Unix
    time of the act.
    """
    for _ in range(tries):
        with psycopg.connect(url) as holder:
            holder.execute("SET lock_timeout = '2s'")
            holder.execute(lock_sql.encode(), lock_args)

            def queued() -> int | None:
                for b in backends(url, member):
                    if b["wait_type"] == "Lock" and query_has in (b["query"] or ""):
                        return int(b["pid"])
                return None

            pid = wait_for(queued, wait_s, 0.005)
            if pid is None:
                holder.rollback()
                continue
            act()
            acted_at = time.time()
            holder.rollback()  # the first backend queued takes the rows
        if not prove:
            return acted_at
        if wait_for(lambda p=pid: p in lockers(url, table), 1.0, 0.01):
            return acted_at
        undo()
    raise AssertionError(f"{member.name} never held {table} after {tries} tries")


# -- what happened: the logs and the request logs -------------------------------------------


@dataclass(frozen=True)
class Call:
    member: str
    job_id: str
    stage: str
    start: float
    end: float | None


@dataclass
class Record:
    """Every member's log and calls, and the committed stages, read once after the fact."""

    claims: dict[str, list[tuple[float, str]]]  # job -> [(ts, member)] in order
    completed: dict[str, list[str]]  # job -> [member announcing JobCompleted]
    calls: list[Call]
    committed: dict[tuple[str, str], float]  # (job, stage) -> Unix time of its commit
    states: dict[str, str]

    @classmethod
    def of(cls, c: Cluster) -> Record:
        claims: dict[str, list[tuple[float, str]]] = {}
        completed: dict[str, list[str]] = {}
        calls: list[Call] = []
        for m in c.members:
            for e in m.daemon.events("JobClaimed"):
                claims.setdefault(e["job_id"], []).append((float(e["ts"]), m.name))
            for e in m.daemon.events("JobCompleted"):
                completed.setdefault(e["job_id"], []).append(m.name)
            calls += [
                Call(
                    m.name, r.job_id, r.stage, wall(r.start), None if r.end is None else wall(r.end)
                )
                for r in m.calls()
            ]
        for seq in claims.values():
            seq.sort()
        committed = {
            (j, s): float(t)
            for j, s, t in rows(
                c.url,
                "SELECT job_id, stage, extract(epoch FROM updated_at)::float8 "
                "FROM briefd_stages WHERE state = 'complete'",
            )
        }
        return cls(claims, completed, sorted(calls, key=lambda x: x.start), committed, c.states())

    def not_ended_once(self, job_ids: Iterable[str]) -> dict[str, Any]:
        """Jobs not in a terminal state, or not announced exactly once across the logs."""
        bad: dict[str, Any] = {}
        for j in job_ids:
            if self.states.get(j) not in TERMINAL or len(self.completed.get(j, [])) != 1:
                bad[j] = (self.states.get(j), self.completed.get(j, []))
        return bad

    def holder_at(self, job_id: str, t: float) -> str | None:
        """Whose claim on ``job_id`` was the newest at Unix time ``t`` (by the logs)."""
        holder = None
        for ts, name in self.claims.get(job_id, []):
            if ts > t:
                break
            holder = name
        return holder

    def calls_after_replacement(self) -> list[str]:
        """Calls started by a daemon after another daemon's newer claim on the job."""
        bad = []
        for call in self.calls:
            mine = [ts for ts, n in self.claims.get(call.job_id, []) if n == call.member]
            mine = [ts for ts in mine if ts <= call.start]
            if not mine:
                continue
            replaced = [
                (ts, n)
                for ts, n in self.claims.get(call.job_id, [])
                if n != call.member and mine[-1] < ts < call.start
            ]
            if replaced:
                ts, n = replaced[0]
                bad.append(
                    f"{call.member} called {call.job_id}/{call.stage} {call.start - ts:.2f}s "
                    f"after {n} took the job over"
                )
        return bad

    def calls_after_commit(self) -> list[str]:
        """Calls started for a stage after its document was committed (a document re-bought)."""
        bad = []
        for call in self.calls:
            at = self.committed.get((call.job_id, call.stage))
            if at is not None and call.start > at:
                bad.append(
                    f"{call.member} called {call.job_id}/{call.stage} {call.start - at:.2f}s "
                    "after it was committed"
                )
        return bad

    def longest_quiet(self, members: Iterable[str], start: float, end: float) -> float:
        """The longest time in [start, end] when none of ``members`` had a call on the wire."""
        who = set(members)
        spans = sorted(
            (c.start, c.end if c.end is not None else end) for c in self.calls if c.member in who
        )
        longest, covered = 0.0, start
        for s, e in spans:
            if e <= covered:
                continue
            if s > covered:
                longest = max(longest, min(s, end) - covered)
            covered = max(covered, e)
            if covered >= end:
                break
        return max(longest, end - covered)

    def first_claim_by_other(self, job_id: str, member: str, after: float) -> float | None:
        for ts, n in self.claims.get(job_id, []):
            if n != member and ts > after:
                return ts
        return None


# -- /healthz -------------------------------------------------------------------------------


@dataclass
class HealthProbe:
    """Ask a daemon's ``/healthz`` every ``every_s`` in a thread: (Unix time, status or None
    when no answer within ``timeout_s``, seconds taken)."""

    url: str
    every_s: float = 0.1
    timeout_s: float = 2.0
    seen: list[tuple[float, int | None, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthProbe:
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            status: int | None
            try:
                status = HTTP.get(f"{self.url}/healthz", timeout=self.timeout_s).status_code
            except Exception:
                status = None
            self.seen.append((time.time(), status, time.monotonic() - began))
            self._stop.wait(self.every_s)

    def between(self, start: float, end: float) -> list[tuple[float, int | None, float]]:
        return [s for s in self.seen if start <= s[0] <= end]


def poll(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """:func:`wait_for`, failing the test with ``what`` at the deadline."""
    value = wait_for(condition, timeout_s, 0.02)
    assert value, f"not within {timeout_s}s: {what}"
    return value
