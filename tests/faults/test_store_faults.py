"""The daemon's storage under faults: a job is never lost, wedged, bought twice or written astray.

Each test runs ``briefd serve`` as a real subprocess on a real data dir against the
in-process simulator (whose per-stage counts prove nothing is paid twice). The
tests run as root, who ignores permission bits, so the faults are ones root
cannot write through: a regular file where a folder must be, a file-size limit
on the daemon (``prlimit``: a write past it fails with ``EFBIG``, as a full disk
fails with ``ENOSPC``), planted symbolic links, damaged journal files.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import HTTP, STAGES, Daemon, make_job, wait_for

from briefd.config import load_pipeline
from briefd.daemon.client import DaemonError
from briefd.messages import ErrorCode, JobSpec, JobState, JobStatus, StageState
from briefd.sim.server import Fault, SimProfile, SimServer
from briefd.store.sqlite import Journal

TEMP_PREFIX = ".briefd-tmp."
"""What a job file's temporary copy is called before its rename (documented in docs/daemon.md)."""


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.02)) as server:
        yield server


class PipedDaemon(Daemon):
    """A daemon whose output reaches its log file through a pipe this process copies.

    A file-size limit put on the daemon then fails its journal and job files, but
    not its log (a pipe is not a file the limit applies to).
    """

    def spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, cwd=self.tmp, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        pipe = proc.stdout
        assert pipe is not None

        def copy() -> None:
            with open(self.log_path, "ab") as log:
                for line in pipe:
                    log.write(line)
                    log.flush()

        threading.Thread(target=copy, name="daemon-log", daemon=True).start()
        return proc


def _health(d: Daemon) -> tuple[int, dict[str, Any]]:
    resp = HTTP.get(f"{d.url}/healthz", timeout=5)
    return resp.status_code, resp.json()


def _requests(sim: SimServer, job_id: str) -> dict[str, int]:
    return dict(sim.stats().by_job_stage.get(job_id, {}))


# -- 1. unwritable output, full disk --------------------------------------------------


def test_an_unwritable_jobs_dir_ends_the_job_with_output_error_and_pays_nothing_twice(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A regular file where ``jobs/`` must be: the job still ends (documents in the journal,
    served by the API) with an OUTPUT_ERROR naming the path, /healthz is 503 with the reason
    until the folder can be written again, and a restart calls no stage again."""
    d = Daemon(tmp_path, sim.base_url)
    daemons.append(d.start())
    jobs = d.data_dir / "jobs"
    shutil.rmtree(jobs, ignore_errors=True)
    jobs.write_text("a file where the jobs folder goes\n")
    with d.client() as client:
        client.submit(make_job("out-1"))
        result = client.result("out-1", timeout=30)
    assert result.status is JobStatus.SUCCEEDED
    assert all(result.documents[s] for s in STAGES)
    [err] = [e for e in result.errors if e.code is ErrorCode.OUTPUT_ERROR]
    assert str(jobs) in err.message and err.hint
    code, body = _health(d)
    assert code == 503 and str(jobs) in body.get("reason", ""), body

    jobs.unlink()  # the operator frees the place: healthy again, without a restart
    assert wait_for(lambda: _health(d)[0] == 200, 10), _health(d)

    d.signal(signal.SIGTERM)
    assert d.wait_exit(15) == 0, d.log()
    d.start()
    with d.client() as client:
        again = client.result("out-1", timeout=10)
    assert again.status is JobStatus.SUCCEEDED and again.errors == result.errors
    assert _requests(sim, "out-1") == dict.fromkeys(STAGES, 1)


def test_a_full_disk_holds_the_journal_writes_and_healthz_says_so_until_space_returns(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The daemon's writes fail mid-job (a file-size limit of 0 on the daemon): /healthz is
    503 naming the journal, the job stays as last committed (running, not lost, not ended
    in silence), a new submission is refused (503, never acknowledged); once writes succeed
    again the held writes land, the job ends, /healthz is 200, and no stage was paid twice."""
    slow_sim.inject(Fault(job_id="full-1", stage="ANNEX_JSON", delay_s=2.0))
    d = PipedDaemon(tmp_path, slow_sim.base_url)
    daemons.append(d.start())
    assert d.proc is not None
    pid = d.proc.pid
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    with d.client() as client:
        client.submit(make_job("full-1"))
        assert wait_for(
            lambda: client.status("full-1").stages["ANNEX_JSON"] is StageState.RUNNING, 15
        )
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        try:
            assert wait_for(lambda: _health(d)[0] == 503, 15), d.log()
            body = _health(d)[1]
            assert "journal" in body["reason"] and "briefd.sqlite3" in body["reason"], body
            assert client.status("full-1").status is JobState.RUNNING
            refused = HTTP.post(
                f"{d.url}/v1/jobs", json=make_job("full-2"), headers=d.headers(), timeout=10
            )
            assert refused.status_code == 503, refused.text  # not written, so not acknowledged
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
        result = client.result("full-1", timeout=30)
        assert wait_for(lambda: _health(d)[0] == 200, 10), _health(d)
        with pytest.raises(DaemonError) as unknown:
            client.status("full-2")
        assert unknown.value.status == 404
    assert result.status is JobStatus.SUCCEEDED and result.errors == [], result.errors
    assert _requests(slow_sim, "full-1") == dict.fromkeys(STAGES, 1)
    saved = json.loads((d.data_dir / "jobs" / "full-1" / "result.json").read_text())
    assert saved["status"] == "succeeded"


# -- 3. a damaged journal -------------------------------------------------------------


def _journal_with_jobs(db: Path, make: Any, n: int) -> None:
    journal = Journal(db, load_pipeline())
    for i in range(n):
        journal.add_job(JobSpec.model_validate(make(f"kept-{i}")))
    journal.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_journal_is_moved_aside_and_the_daemon_exits_2(
    damage: str, sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Garbage bytes, a truncated file or a zero-length file: the journal (with its -wal and
    -shm) is moved beside itself under a timestamped name, exit 2 with one line saying where
    and how to start fresh; never a traceback, never an empty journal over the old one."""
    d = Daemon(tmp_path, sim.base_url)
    d.data_dir.mkdir()
    db = d.data_dir / "briefd.sqlite3"
    _journal_with_jobs(db, make_job, 40)
    if damage == "garbage":
        db.write_bytes(b"this is not a database " * 400)
        Path(f"{db}-wal").write_bytes(b"wal bytes")
        Path(f"{db}-shm").write_bytes(b"shm bytes")
    elif damage == "truncated":
        whole = db.read_bytes()
        assert len(whole) > 3 * 4096
        db.write_bytes(whole[: len(whole) // 2])
    else:
        db.write_bytes(b"")
    damaged = db.read_bytes()

    proc = subprocess.run(
        [sys.executable, "-m", "briefd", "serve"],
        env=d.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    [moved] = sorted(d.data_dir.glob("briefd.sqlite3.corrupt-*[0-9TZ]"))
    assert moved.read_bytes() == damaged
    assert str(moved) in line and "start" in line, line
    assert not db.exists()
    if damage == "garbage":
        assert Path(f"{moved}-wal").read_bytes() == b"wal bytes"  # the last commits, kept
        assert Path(f"{moved}-shm").exists()  # an index SQLite rebuilds from the WAL
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()

    daemons.append(d.start())  # started again: a fresh journal, as the line said
    with d.client() as client:
        assert client.jobs() == []


# -- 5. symbolic links ----------------------------------------------------------------


def test_planted_symlinks_under_jobs_are_refused_not_followed(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A job folder that is a link, or ``jobs/`` itself a link: the job ends with OUTPUT_ERROR
    and nothing is written outside the data dir. A link planted as a job's file is replaced
    by the file, its target untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.md"
    victim.write_text("keep me\n")
    d = Daemon(tmp_path, sim.base_url)
    daemons.append(d.start())
    jobs = d.data_dir / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "link-1").symlink_to(outside, target_is_directory=True)
    (jobs / "link-2").mkdir()
    (jobs / "link-2" / "briefing.md").symlink_to(victim)
    with d.client() as client:
        client.submit(make_job("link-1"))
        client.submit(make_job("link-2"))
        first = client.result("link-1", timeout=30)
        second = client.result("link-2", timeout=30)
        jobs.rename(d.data_dir / "jobs-before")
        jobs.symlink_to(outside, target_is_directory=True)
        client.submit(make_job("link-3"))
        third = client.result("link-3", timeout=30)
    for result, where in ((first, jobs / "link-1"), (third, jobs)):
        [err] = [e for e in result.errors if e.code is ErrorCode.OUTPUT_ERROR]
        assert str(where) in err.message and "link" in err.message, err
    assert second.errors == []
    written = d.data_dir / "jobs-before" / "link-2" / "briefing.md"
    assert not written.is_symlink() and written.read_text() == second.documents["BRIEFING_MD"]
    assert sorted(p.name for p in outside.iterdir()) == ["victim.md"]
    assert victim.read_text() == "keep me\n"


def test_temp_files_left_by_a_crash_are_removed_at_start(
    sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A temporary file a crash left between write and rename is gone once the daemon has
    started; the job's real files, and files that are not ours, stay."""
    d = Daemon(tmp_path, sim.base_url)
    job_dir = d.data_dir / "jobs" / "old-1"
    job_dir.mkdir(parents=True)
    left = job_dir / f"{TEMP_PREFIX}briefing.md.3f9a1c2b"
    left.write_text("half a docu")
    (job_dir / "briefing.md").write_text("# whole\n")
    (job_dir / "notes.txt").write_text("the operator's\n")
    daemons.append(d.start())
    assert sorted(p.name for p in job_dir.iterdir()) == ["briefing.md", "notes.txt"]


# -- 6. modes -------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_files_under_the_data_dir_are_private_whatever_the_umask(
    umask: int, sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Journal, -wal, -shm, lock, token, ``jobs/``, each job folder and file: folders 0700,
    files 0600, under a permissive umask."""
    d = Daemon(tmp_path, sim.base_url)
    old = os.umask(umask)  # the child inherits it
    try:
        daemons.append(d.start())
    finally:
        os.umask(old)
    with d.client() as client:
        client.submit(make_job("mode-1"))
        assert client.result("mode-1", timeout=30).status is JobStatus.SUCCEEDED
    found = {p.relative_to(d.data_dir).as_posix(): p for p in d.data_dir.rglob("*")}
    expected = {
        "briefd.sqlite3",
        "briefd.sqlite3-wal",
        "briefd.sqlite3-shm",
        "briefd.lock",
        "token",
        "jobs",
        "jobs/mode-1",
        "jobs/mode-1/result.json",
        "jobs/mode-1/briefing.md",
    }
    assert expected <= set(found), sorted(found)
    modes = {
        name: oct(stat.S_IMODE(p.lstat().st_mode))
        for name, p in [(".", d.data_dir), *found.items()]
    }
    wanted = {name: oct(0o700 if (d.data_dir / name).is_dir() else 0o600) for name in modes}
    assert modes == wanted
