"""Several daemons on one PostgreSQL database: jobs are claimed under a lease, and fenced.

Two :class:`PostgresStore` objects on one database stand for two daemons. The
claims race from threads and from both stores; a lease is let lapse for real
(``lease_s=1``, waited for by checking the database on a deadline), and the
old holder, a zombie now, must find every write refused (:class:`ClaimLost`)
and the rows unchanged. Notifications are read by a separate ``LISTEN``ing
connection, as the daemon's wake-up thread would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pykka
import pytest

from briefd.actors.journal import JournalActor
from briefd.config import PipelineSpec, Settings
from briefd.messages import (
    ErrorCode,
    JobLoaded,
    JobResult,
    JobSpec,
    JobState,
    JobStatus,
    LoadJob,
    StageState,
    StageSucceeded,
)
from briefd.store import JournalStore
from briefd.store.base import Claim, ClaimLost
from briefd.store.pg_claims import CANCEL_CHANNEL, FINISHED_CHANNEL, JOBS_CHANNEL
from briefd.store.pg_setup import MIGRATIONS, SCHEMA_VERSION
from briefd.store.postgres import PostgresStore

from .conftest import Backend
from .conftest import until as _until

Spec = Callable[[str], JobSpec]
Result = Callable[..., JobResult]
BRIEFING = "BRIEFING_MD"


@pytest.fixture
def pg(pg_url: str, tmp_path: Path, pipeline: PipelineSpec) -> Iterator[Backend]:
    """The PostgreSQL backend only: what claims are made of (SQLite has one daemon)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url)
    b = Backend("postgres", settings, pipeline)
    yield b
    for store in b.opened:
        store.close()


@pytest.fixture
def two(pg: Backend) -> tuple[PostgresStore, PostgresStore]:
    """Two daemons on one database."""
    a, b = pg.daemons()
    assert isinstance(a, PostgresStore) and isinstance(b, PostgresStore) and a is not b
    return a, b


def _row(admin: psycopg.Connection[Any], job_id: str) -> tuple[Any, ...]:
    """Everything a write could change about a job: its row and its stages."""
    job = admin.execute(
        "SELECT state, runs, restarts, result, claimed_by, lease_until, fence, finished_at "
        "FROM briefd_jobs WHERE job_id = %s",
        (job_id,),
    ).fetchone()
    stages = admin.execute(
        "SELECT stage, state, attempts, document, error, updated_at FROM briefd_stages "
        "WHERE job_id = %s ORDER BY stage",
        (job_id,),
    ).fetchall()
    return job, tuple(stages)


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())} if root.is_dir() else {}


def _lapsed(admin: psycopg.Connection[Any], job_id: str) -> bool:
    row = admin.execute(
        "SELECT lease_until < now() FROM briefd_jobs WHERE job_id = %s", (job_id,)
    ).fetchone()
    return bool(row and row[0])


def test_racing_claims_never_take_one_job_twice(
    two: tuple[PostgresStore, PostgresStore], spec: Spec
) -> None:
    """Eight threads over two daemons claim 40 jobs at once: each job is claimed exactly
    once, every fence is distinct, and each store holds exactly what it claimed."""
    a, b = two
    for i in range(40):
        a.add_job(spec(f"j-{i:02d}"))
    start = threading.Barrier(8)
    got: dict[str, list[Claim]] = {"a": [], "b": []}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(store: PostgresStore, owner: str) -> None:
        try:
            start.wait(timeout=10)
            for _ in range(40):  # bounded: a store that re-claims fails, not hangs
                claims = store.claim(owner, 3, 30.0)
                if not claims:
                    return
                with lock:
                    got[owner].extend(claims)
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(s, o)) for s, o in [(a, "a"), (b, "b")] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and not any(t.is_alive() for t in threads)
    claimed = [c.job_id for c in got["a"] + got["b"]]
    assert sorted(claimed) == [f"j-{i:02d}" for i in range(40)], "each job exactly once"
    assert len({c.fence for c in got["a"] + got["b"]}) == 40
    assert a.held() == {c.job_id: c.fence for c in got["a"]}
    assert b.held() == {c.job_id: c.fence for c in got["b"]}
    assert a.claim("a", 5, 30.0) == [] and b.claim("b", 5, 30.0) == [], "live claims are held"


def test_claims_go_to_the_highest_aged_priority_then_the_oldest(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """Effective priority is ``priority`` + one level per 30 s since submission (the
    limiter's rule), then submission order: an old low-priority job passes newer ones."""
    a, b = two
    for job_id, priority in [("a0", 0), ("b0", 0), ("high2", 2), ("top5", 5), ("old0", 0)]:
        a.add_job(spec(job_id).model_copy(update={"priority": priority}))
    admin.execute(  # submitted 95 s ago: three levels of aging, so 3 > 2 and < 5
        "UPDATE briefd_jobs SET submitted_at = now() - interval '95 seconds' WHERE job_id = 'old0'"
    )
    first = a.claim("a", 2, 30.0)
    assert [c.job_id for c in first] == ["top5", "old0"]
    rest = b.claim("b", 10, 30.0)
    assert [c.job_id for c in rest] == ["high2", "a0", "b0"]
    assert all(not c.taken_over and c.previous_owner is None for c in first + rest)
    assert first[1].submitted_at < first[0].submitted_at - 90, "epoch s of the submission"
    assert abs(first[0].submitted_at - time.time()) < 60


def test_a_lapsed_lease_is_taken_over_and_the_zombie_writes_nothing(
    two: tuple[PostgresStore, PostgresStore],
    spec: Spec,
    make_result: Result,
    admin: psycopg.Connection[Any],
) -> None:
    """Daemon A claims for 1 s, runs a stage, then stalls; B takes the job over with a larger
    fence, the dead run counted and the document kept. A's every late write is refused."""
    a, b = two
    a.add_job(spec("j"))
    (mine,) = a.claim("a", 1, 1.0)
    run = a.start_run("j")
    assert run.job is not None and run.runs_died == 0
    a.stage_succeeded("j", BRIEFING, "# Briefing", 1)
    a.stage_started("j", "PLAYS_MD", 1)
    assert b.claim("b", 5, 30.0) == [], "A's lease is live"
    _until(lambda: _lapsed(admin, "j"))
    (theirs,) = b.claim("b", 5, 30.0)
    assert theirs.job_id == "j" and theirs.fence > mine.fence
    assert theirs.taken_over and theirs.previous_owner == "a" and theirs.cancel is None
    resumed = b.start_run("j")
    assert resumed.runs_died == 1 and resumed.done_stages == {BRIEFING: "# Briefing"}
    assert resumed.submitted_at == pytest.approx(mine.submitted_at)
    before = _row(admin, "j"), _files(a.files.jobs_dir / "j")
    done = {BRIEFING: StageState.COMPLETE, "PLAYS_MD": StageState.COMPLETE}
    zombie_writes: list[Callable[[], Any]] = [
        lambda: a.stage_succeeded("j", "PLAYS_MD", "# late", 1),
        lambda: a.stage_started("j", "PROCUREMENT_JSON", 1),
        lambda: a.finish(make_result("j", JobStatus.SUCCEEDED, {BRIEFING: "x"}, done)),
        lambda: a.close_job("j", JobState.FAILED, ErrorCode.CRASHED, "late"),
        lambda: a.suspend(["j"]),
        lambda: a.start_run("j"),
    ]
    for write in zombie_writes:
        with pytest.raises(ClaimLost) as err:
            write()
        assert err.value.job_ids == ["j"]
    assert (_row(admin, "j"), _files(a.files.jobs_dir / "j")) == before, "nothing changed"
    assert a.held() == {} and b.held() == {"j": theirs.fence}
    b.stage_succeeded("j", "PLAYS_MD", "# Plays", 1)
    assert b.finish(make_result("j", JobStatus.SUCCEEDED, {}, done))


def test_renew_extends_the_held_leases_and_reports_the_lost(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """A renew extends only claims whose row still names this daemon and its fence; a claim
    taken over is reported once and forgotten, and its later writes stay fenced."""
    a, b = two
    for job_id in ("keep", "lose"):
        a.add_job(spec(job_id))
    claims = {c.job_id: c.fence for c in a.claim("a", 2, 1.0)}
    assert set(claims) == {"keep", "lose"}
    assert a.renew("a", 30.0) == []
    assert not _lapsed(admin, "keep")
    admin.execute("UPDATE briefd_jobs SET lease_until = now() - interval '1 s' WHERE job_id='lose'")
    assert [c.job_id for c in b.claim("b", 5, 30.0)] == ["lose"]
    assert a.renew("a", 30.0) == ["lose"]
    assert a.held() == {"keep": claims["keep"]}
    assert a.renew("a", 30.0) == [], "reported once"
    lease = admin.execute(
        "SELECT extract(epoch FROM lease_until - now()) FROM briefd_jobs WHERE job_id='keep'"
    ).fetchone()
    assert lease is not None and 20 < float(lease[0]) <= 30
    with pytest.raises(ClaimLost):
        a.stage_started("lose", BRIEFING, 1)
    assert b.renew("someone-else", 30.0) == ["lose"], "the row must name the owner"


def test_suspend_and_the_end_free_the_claims_at_once(
    two: tuple[PostgresStore, PostgresStore],
    pipeline: PipelineSpec,
    spec: Spec,
    make_result: Result,
    admin: psycopg.Connection[Any],
) -> None:
    """A suspended job is claimable by another daemon at once (no lease to wait out), as a
    fresh queued job, not a dead run; a finished job's claim is freed and forgotten."""
    a, b = two
    a.add_job(spec("s"))
    a.add_job(spec("f"))
    assert {c.job_id for c in a.claim("a", 2, 30.0)} == {"s", "f"}
    a.start_run("s")
    a.start_run("f")
    a.suspend(["s"])
    assert admin.execute(
        "SELECT state, claimed_by, lease_until FROM briefd_jobs WHERE job_id='s'"
    ).fetchone() == ("queued", None, None)
    (again,) = b.claim("b", 5, 30.0)
    assert again.job_id == "s" and not again.taken_over and again.previous_owner is None
    assert b.start_run("s").runs_died == 0
    done = dict.fromkeys(pipeline.names, StageState.COMPLETE)
    assert a.finish(make_result("f", JobStatus.SUCCEEDED, {}, done))
    assert admin.execute(
        "SELECT state, claimed_by, lease_until FROM briefd_jobs WHERE job_id='f'"
    ).fetchone() == ("succeeded", None, None)
    assert a.held() == {} and a.renew("a", 30.0) == []


def test_close_job_leaves_a_job_another_daemon_holds(
    two: tuple[PostgresStore, PostgresStore], spec: Spec
) -> None:
    """Only the holder (or anyone, once the job is free) ends a claimed job by close_job."""
    a, b = two
    a.add_job(spec("c"))
    a.claim("a", 1, 30.0)
    assert b.close_job("c", JobState.CANCELLED, ErrorCode.CANCELLED, "no") is None
    info = b.get("c")
    assert info is not None and info.status is JobState.QUEUED
    closed = a.close_job("c", JobState.CANCELLED, ErrorCode.CANCELLED, "yes")
    assert closed is not None and closed.status is JobStatus.CANCELLED and a.held() == {}


def test_cancel_anywhere_closes_a_free_job_and_asks_the_holder_of_a_claimed_one(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """Free (or lapsed): closed at once with its result. Held: the request is recorded for
    the holder (``cancels``), and a daemon that takes the job over later sees it too."""
    a, b = two
    a.add_job(spec("free"))
    a.add_job(spec("held"))
    state, result = b.cancel_anywhere("free", "user asked")
    assert state is JobState.CANCELLED and result is not None
    assert result.status is JobStatus.CANCELLED and result.errors[0].message == "user asked"
    assert b.cancel_anywhere("free", "again") == (JobState.CANCELLED, None), "terminal"
    assert b.cancel_anywhere("nobody", "x") == (None, None), "unknown"
    (claim,) = a.claim("a", 5, 30.0)
    assert claim.job_id == "held" and claim.cancel is None
    assert b.cancel_anywhere("held", "stop it") == (JobState.RUNNING, None)
    assert b.cancel_anywhere("held", "second reason") == (JobState.RUNNING, None)
    assert a.cancels("a") == [("held", "stop it")], "the first reason is kept"
    assert b.cancels("b") == [] and a.cancels("b") == []
    info = a.get("held")
    assert info is not None and info.status is JobState.QUEUED, "still the holder's to end"
    admin.execute("UPDATE briefd_jobs SET lease_until = now() - interval '1 s' WHERE job_id='held'")
    (taken,) = b.claim("b", 5, 30.0)
    assert taken.job_id == "held" and taken.cancel == "stop it"
    admin.execute("UPDATE briefd_jobs SET lease_until = now() - interval '1 s' WHERE job_id='held'")
    state, result = a.cancel_anywhere("held", "lapsed")
    assert state is JobState.CANCELLED and result is not None, "a lapsed claim is no claim"


def test_the_store_notifies_new_jobs_ends_suspends_and_cancels(
    two: tuple[PostgresStore, PostgresStore],
    pipeline: PipelineSpec,
    spec: Spec,
    make_result: Result,
    pg_url: str,
) -> None:
    """Each notification comes with the commit that warrants it, and only then."""
    a, b = two
    with psycopg.connect(pg_url, autocommit=True) as listener:
        for channel in (JOBS_CHANNEL, FINISHED_CHANNEL, CANCEL_CHANNEL):
            listener.execute(f"LISTEN {channel}")

        def heard(n: int) -> list[tuple[str, str]]:
            got = [(m.channel, m.payload) for m in listener.notifies(timeout=5, stop_after=n)]
            assert len(got) == n, got
            return got

        a.add_job(spec("n1"))
        a.add_job(spec("n2"))
        assert heard(2) == [(JOBS_CHANNEL, ""), (JOBS_CHANNEL, "")]
        a.add_job(spec("n1"))  # exists: nothing to claim, nothing said
        a.claim("a", 2, 30.0)
        b.cancel_anywhere("n2", "stop")
        assert heard(1) == [(CANCEL_CHANNEL, "n2")]
        done = dict.fromkeys(pipeline.names, StageState.COMPLETE)
        a.finish(make_result("n1", JobStatus.SUCCEEDED, {}, done))
        assert heard(1) == [(FINISHED_CHANNEL, "n1")]
        a.suspend(["n2"])
        assert heard(1) == [(JOBS_CHANNEL, "")]
        b.close_job("n2", JobState.CANCELLED, ErrorCode.CANCELLED, "stop")
        assert heard(1) == [(FINISHED_CHANNEL, "n2")]
        assert list(listener.notifies(timeout=0.3)) == [], "nothing more"


def test_a_run_carries_the_submission_time_on_every_backend(
    store: JournalStore, spec: Spec
) -> None:
    """start_run hands back the job's submission time (epoch s): a resumed job keeps its place."""
    before = time.time()
    store.add_job(spec("t"))
    run = store.start_run("t")
    assert before - 1 <= run.submitted_at <= time.time() + 1


def test_a_schema_1_database_is_upgraded_keeping_its_jobs(
    spec: Spec, pg_url: str, pipeline: PipelineSpec, tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    """A database a first-release daemon made (schema 1, a job half done) is upgraded to the
    current schema by the next daemon opening it; the job is kept, claimable, resumed."""
    for statement in MIGRATIONS[1]:
        admin.execute(statement)
    admin.execute("INSERT INTO briefd_schema (version, applied_by) VALUES (1, 'briefd 0.0.1')")
    admin.execute(
        "INSERT INTO briefd_jobs (job_id, spec, state, runs) VALUES ('v1', %s, 'running', 1)",
        (spec("v1").model_dump_json(),),
    )
    admin.execute(
        "INSERT INTO briefd_stages (job_id, stage, state, document) "
        "VALUES ('v1', %s, 'complete', '\"# kept\"')",
        (BRIEFING,),
    )
    store = PostgresStore(pg_url, pipeline, jobs_dir=tmp_path / "jobs")
    try:
        versions = [v for (v,) in admin.execute("SELECT version FROM briefd_schema ORDER BY 1")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        (claim,) = store.claim("d", 5, 30.0)
        assert claim.job_id == "v1" and not claim.taken_over, "running, but nobody's claim"
        run = store.start_run("v1")
        assert run.done_stages == {BRIEFING: "# kept"} and run.runs_died == 1
    finally:
        store.close()


class _Inbox(pykka.ThreadingActor):
    """Stands for the root: keeps what the journal actor tells it."""

    def __init__(self, got: list[Any], told: threading.Event) -> None:
        super().__init__()
        self.got, self.told = got, told

    def on_receive(self, message: Any) -> None:
        self.got.append(message)
        self.told.set()


def test_the_journal_actor_drops_a_fenced_write_once_and_loads_nothing(
    two: tuple[PostgresStore, PostgresStore],
    spec: Spec,
    admin: psycopg.Connection[Any],
    log_lines: list[str],
) -> None:
    """A write refused by the fence is logged once and dropped, never held for retry (the
    writes after it go on); a LoadJob refused that way answers JobLoaded(job=None)."""
    a, b = two
    a.add_job(spec("lost"))
    a.add_job(spec("fine"))
    a.claim("a", 2, 30.0)
    admin.execute("UPDATE briefd_jobs SET lease_until = now() - interval '1 s' WHERE job_id='lost'")
    assert [c.job_id for c in b.claim("b", 5, 30.0)] == ["lost"]
    got: list[Any] = []
    told = threading.Event()
    inbox = _Inbox.start(got, told)
    journal = JournalActor.start(a, retry_s=0.05)
    journal.tell(
        StageSucceeded(job_id="lost", stage=BRIEFING, document="# late", attempts=1, elapsed_ms=1)
    )
    journal.tell(LoadJob(job_id="lost", generation=3, reply_to=inbox.actor_urn))
    assert told.wait(10)
    (loaded,) = got
    assert isinstance(loaded, JobLoaded) and loaded.job is None and loaded.generation == 3
    journal.tell(
        StageSucceeded(job_id="fine", stage=BRIEFING, document="# ok", attempts=1, elapsed_ms=1)
    )
    _until(lambda: a.get("fine").stages[BRIEFING] is StageState.COMPLETE)  # type: ignore[union-attr]
    pause = threading.Event()
    pause.wait(0.2)  # a few retry ticks: a write held for retry would be logged again
    warnings = [line for line in log_lines if "claim lost to another daemon" in line]
    assert len(warnings) == 2, warnings  # the stage write and the load, once each
    assert all(line.startswith("WARNING job lost: claim lost") for line in warnings)
    info = b.get("lost")
    assert info is not None and info.stages[BRIEFING] is StageState.PENDING


def test_a_rescue_claims_only_lapsed_jobs_not_the_queue(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """``lapsed_only`` takes a dead daemon's jobs (claimed, lease lapsed) and leaves the free
    queue alone: what a daemon with no room left takes over at once."""
    a, b = two
    for job_id in ("old", "free"):
        a.add_job(spec(job_id))
    (dead,) = a.claim("a", 1, 1.0)
    assert dead.job_id == "old"
    a.start_run("old")
    assert b.claim("b", 5, 30.0, lapsed_only=True) == [], "A's lease is live"
    _until(lambda: _lapsed(admin, "old"))
    (rescued,) = b.claim("b", 5, 30.0, lapsed_only=True)
    assert rescued.job_id == "old" and rescued.taken_over and rescued.previous_owner == "a"
    assert [c.job_id for c in b.claim("b", 5, 30.0)] == ["free"]


def test_a_dead_daemons_claimed_but_unstarted_job_is_taken_over_too(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """A job claimed by a daemon that died before starting it (it waited in that daemon's
    queue) is a takeover like a running one: the console and the takeover count see it."""
    a, b = two
    a.add_job(spec("waiting"))
    (dead,) = a.claim("a", 1, 1.0)
    assert dead.job_id == "waiting"
    _until(lambda: _lapsed(admin, "waiting"))
    (rescued,) = b.claim("b", 5, 30.0, lapsed_only=True)
    assert rescued.job_id == "waiting" and rescued.fence > dead.fence
    assert rescued.taken_over and rescued.previous_owner == "a"
    assert b.start_run("waiting").runs_died == 0, "it never ran, so no run died"


def test_a_claim_lost_on_a_write_is_known_at_once_and_reported_by_renew(
    two: tuple[PostgresStore, PostgresStore], spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """A write refused by the fence makes the claim unprovable at once, and the next renew
    reports it (before, the refusal forgot the claim: renew never named it, so the root
    never stopped the run, and every later stage was called and refused)."""
    a, b = two
    a.add_job(spec("z"))
    (claim,) = a.claim("a", 1, 30.0)
    assert a.claim_valid("z")
    admin.execute("UPDATE briefd_jobs SET lease_until = now() - interval '1 s' WHERE job_id='z'")
    assert [c.job_id for c in b.claim("b", 1, 30.0)] == ["z"]
    with pytest.raises(ClaimLost):
        a.stage_succeeded("z", BRIEFING, {"text": "late"}, 1)
    assert not a.claim_valid("z"), "a claim found lost must not be provable"
    assert a.renew("a", 30.0) == ["z"]
    assert a.renew("a", 30.0) == [], "reported once"
    with pytest.raises(ClaimLost):  # still fenced
        a.stage_started("z", BRIEFING, 2)
    assert claim.fence < b.held()["z"]


def test_a_claim_is_proven_until_its_lease_less_the_margin(
    pg: Backend, spec: Spec, admin: psycopg.Connection[Any]
) -> None:
    """On the daemon's own clock: valid after the claim, unprovable once lease minus margin
    passed without a renewal (while the database still says it holds), valid again after a
    renewal; the store says why for /healthz meanwhile."""
    store = pg.open()
    assert isinstance(store, PostgresStore)
    store.add_job(spec("p"))
    began = time.monotonic()
    store.claim("p-daemon", 1, 1.0)
    assert store.claim_valid("p") and store.claims_problem() is None
    _until(lambda: not store.claim_valid("p"), 5)
    assert time.monotonic() - began >= 0.9 * 1.0 - 0.05, "proven for less than lease - margin"
    problem = store.claims_problem()
    assert problem is not None and "1 job" in problem
    assert not store.claim_valid("never-claimed")
    assert store.renew("p-daemon", 30.0) == []
    assert store.claim_valid("p") and store.claims_problem() is None
