"""``briefd console`` and ``briefd report`` over several event logs: a cluster's daemons as one.

Every log is written here with the real serialiser from real message models
(the lines a daemon writes), one folder per daemon as a cluster would lay them
out: ``logs/d1/events.log``, ``logs/d2/events.log``, ``logs/d3/events.log``.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from log_helpers import daemon_started as started
from log_helpers import write_log as write
from rich.console import Console

from briefd.cli import main as cli_main
from briefd.messages import (
    DaemonStopping,
    Event,
    JobAccepted,
    JobClaimed,
    JobCompleted,
    JobMetrics,
    JobRestarted,
    JobResult,
    JobStarted,
    JobState,
    JobStatus,
    Progress,
    StageStarted,
    StageState,
    StageSucceeded,
    TokenGranted,
    TokenReleased,
)
from briefd.ops.console import render
from briefd.ops.sources import LogSet
from briefd.ops.view import OpsView

T0 = 1_700_000_000.0  # in the past: a stopped daemon's grace is over
STAGE = "BRIEFING_MD"


def completed(job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> JobCompleted:
    """A one-stage job's JobCompleted."""
    metrics = JobMetrics(
        stages_ms={STAGE: 900},
        parallel_group_ms=900,
        sequential_group_ms=0,
        total_ms=1000,
        speedup_ratio=0.9,
        usage={},
        attempts={STAGE: 1},
    )
    progress = Progress(stages={STAGE: StageState.COMPLETE}, percent=100.0)
    result = JobResult(
        job_id=job_id,
        status=status,
        documents={STAGE: "text"},
        errors=[],
        fallbacks=[],
        progress=progress,
        metrics=metrics,
        total_cost_usd=0.25,
    )
    return JobCompleted(job_id=job_id, result=result)


def run_job(job_id: str, ts: float, *, in_use: int = 1) -> list[tuple[float, Event]]:
    """A one-stage job from acceptance to its running stage, holding a token."""
    return [
        (ts, JobAccepted(job_id=job_id, status=JobState.RUNNING, queued=0)),
        (ts + 0.1, JobStarted(job_id=job_id, stages=[STAGE], parallel=True, max_concurrent=2)),
        (ts + 0.2, TokenGranted(job_id=job_id, stage=STAGE, lease_id=1, in_use=in_use, capacity=2)),
        (ts + 0.3, StageStarted(job_id=job_id, stage=STAGE, attempt=1)),
    ]


def finish_job(job_id: str, ts: float) -> list[tuple[float, Event]]:
    """The rest of ``run_job``: token back, stage done, job done."""
    return [
        (ts, TokenReleased(job_id=job_id, stage=STAGE, lease_id=1, in_use=0, capacity=2)),
        (
            ts + 0.1,
            StageSucceeded(job_id=job_id, stage=STAGE, document="d", elapsed_ms=900, attempts=1),
        ),
        (ts + 0.2, completed(job_id)),
    ]


def cluster(root: Path) -> list[Path]:
    """Three daemons' logs: d1 and d3 running a job each, d2 ran one and stopped."""
    d1 = write(root / "d1" / "events.log", (T0, started(8761)), *run_job("a-1", T0 + 1))
    d2 = write(
        root / "d2" / "events.log",
        (T0 + 0.5, started(8762)),
        *run_job("b-1", T0 + 1.5),
        *finish_job("b-1", T0 + 3),
        (T0 + 4, DaemonStopping(signal="SIGTERM", grace_s=1.0, active=0, queued=0)),
    )
    d3 = write(
        root / "d3" / "events.log", (T0 + 0.7, started(8763)), *run_job("c-1", T0 + 2, in_use=2)
    )
    return [d1, d2, d3]


def view_of(logs: LogSet) -> OpsView:
    """A view of everything ``logs`` hold now, as the console builds it."""
    view = OpsView()
    view.apply_merged(logs.poll())
    return view


def screen(view: OpsView, source: str = "logs") -> str:
    """The console's screen for ``view``, as plain text."""
    out = io.StringIO()
    Console(file=out, width=180).print(render(view.snapshot(T0 + 60), source=source))
    return out.getvalue()


def test_events_of_several_logs_are_merged_in_time_order(tmp_path: Path) -> None:
    """The records of all logs come out by timestamp, each log's own order kept."""
    paths = cluster(tmp_path)
    logs = LogSet([str(p) for p in paths])
    merged = logs.poll()
    logs.close()
    stamps = [record.ts for _, record in merged]
    assert stamps == sorted(stamps) and len(merged) == 5 + 9 + 5
    order = [source for source, _ in merged]
    assert order[:3] == [str(paths[0]), str(paths[1]), str(paths[2])], "the three starts first"
    for path in paths:  # each file's records, in the order the file holds them
        mine = [r.event for s, r in merged if s == str(path)]
        assert mine[0] == "DaemonStarted" and mine.index("JobAccepted") < mine.index("JobStarted")


def test_the_jobs_table_names_each_jobs_daemon(tmp_path: Path) -> None:
    """Three logs: the header says which daemons are up, the jobs table which runs each job,
    the token line sums the daemons and gives each one's figures."""
    logs = LogSet([str(tmp_path / "*" / "events.log")])
    paths = cluster(tmp_path)
    logs.scan()
    view = view_of(logs)
    logs.close()
    snap = view.snapshot(T0 + 60)
    names = [s["name"] for s in snap.sources]
    assert names == ["127.0.0.1:8761", "127.0.0.1:8762", "127.0.0.1:8763"]
    assert [s["status"] for s in snap.sources] == ["running", "stopped", "running"]
    assert [s["log"] for s in snap.sources] == [str(p) for p in paths]
    owners = {j.job_id: j.owner for j in [*snap.active, *snap.recent]}
    assert owners == {"a-1": names[0], "b-1": names[1], "c-1": names[2]}
    assert (snap.tokens["in_use"], snap.tokens["capacity"], snap.tokens["peak"]) == (3, 6, 4)
    text = screen(view)
    assert "3 logs: 127.0.0.1:8761 running, 127.0.0.1:8762 stopped, 127.0.0.1:8763 running" in text
    assert re.search(r"job +┃ daemon +┃ state", text)
    assert re.search(r"a-1 +│ 127\.0\.0\.1:8761 +│ running", text)
    assert re.search(r"b-1 +│ 127\.0\.0\.1:8762 +│ succeeded", text)
    assert "tokens 3/6 (peak 4)" in text
    assert "127.0.0.1:8763: tokens 2/2 (peak 2), stages in flight 1, active jobs 1" in text


def test_a_single_log_shows_no_daemon_column(tmp_path: Path) -> None:
    """One log reads as it always did: no daemon column, no per-daemon lines, no new keys."""
    (d1, *_) = cluster(tmp_path)
    logs = LogSet([str(d1)])
    view = view_of(logs)
    logs.close()
    snap = view.snapshot(T0 + 60)
    assert snap.sources == [] and snap.daemon is not None and snap.daemon["pid"] == 8761
    assert "sources" not in snap.to_json() and "owner" not in snap.to_json()["active"][0]
    text = screen(view)
    assert "daemon" not in text.split("\n")[2] and "logs:" not in text
    assert re.search(r"a-1 +│ running", text)


def test_a_job_taken_over_is_one_row_with_its_last_owner(tmp_path: Path) -> None:
    """d1 dies holding a job; d2 restarts it; d1's late words about the job and d1's own
    restart change nothing: one row, d2's, running, then succeeded, counted once."""
    d1, d2 = tmp_path / "d1" / "events.log", tmp_path / "d2" / "events.log"
    write(d1, (T0, started(8761)), *run_job("j", T0 + 1))
    write(d2, (T0 + 0.5, started(8762)))
    logs = LogSet([str(d1), str(d2)])
    view = view_of(logs)
    (row,) = view.snapshot().active
    assert (row.job_id, row.owner, row.state) == ("j", "127.0.0.1:8761", "running")

    write(d2, (T0 + 10, JobRestarted(job_id="j", runs=1, reason="lease lapsed")))
    write(d2, *run_job("j", T0 + 10.5)[1:])
    write(d1, (T0 + 11, completed("j", JobStatus.FAILED)))  # a stale end from the loser
    write(d1, (T0 + 11.5, started(8761)))  # d1's restart interrupts only what d1 runs
    view.apply_merged(logs.poll())
    snap = view.snapshot()
    assert [(j.job_id, j.owner, j.state) for j in snap.active] == [
        ("j", "127.0.0.1:8762", "running")
    ]
    assert snap.recent == [] and snap.jobs_by_status == {} and snap.stages_running == 1

    write(d2, *finish_job("j", T0 + 12))
    view.apply_merged(logs.poll())
    logs.close()
    snap = view.snapshot()
    rows = [j for j in [*snap.active, *snap.recent] if j.job_id == "j"]
    assert [(j.owner, j.state) for j in rows] == [("127.0.0.1:8762", "succeeded")]
    assert snap.jobs_by_status == {"succeeded": 1} and snap.totals["job_restarts"] == 1
    assert snap.tokens["in_use"] == 0 and snap.stages_running == 0


def test_a_job_interrupted_then_taken_over_comes_back_as_one_row(tmp_path: Path) -> None:
    """d1 restarts first (its job ends as interrupted), then d2 claims the job (a cluster's
    ``JobClaimed``, taken over): the ended row comes back, d2's, and ends once."""
    d1, d2 = tmp_path / "d1" / "events.log", tmp_path / "d2" / "events.log"
    write(d1, (T0, started(8761)), *run_job("j", T0 + 1), (T0 + 5, started(8761)))
    write(
        d2,
        (T0 + 0.5, started(8762)),
        (T0 + 6, JobClaimed(job_id="j", daemon="h2:8762:x", fence=2, taken_over=True)),
        *run_job("j", T0 + 6.5)[1:],
        *finish_job("j", T0 + 8),
    )
    logs = LogSet([str(d1), str(d2)])
    view = view_of(logs)
    logs.close()
    snap = view.snapshot()
    rows = [j for j in [*snap.active, *snap.recent] if j.job_id == "j"]
    assert [(j.owner, j.state) for j in rows] == [("127.0.0.1:8762", "succeeded")]
    assert snap.jobs_by_status == {"succeeded": 1} and snap.totals["job_takeovers"] == 1


def test_a_daemon_whose_jobs_were_taken_over_shows_as_lost_until_it_writes_again(
    tmp_path: Path,
) -> None:
    """d1 is killed (its log just stops) holding a token; d2 takes its job over. d1's log
    cannot say it died, d2's takeover does: d1 is ``lost``, its token and stage no longer
    in flight. When d1 starts again it is ``running``."""
    d1, d2 = tmp_path / "d1" / "events.log", tmp_path / "d2" / "events.log"
    dead = "h1:8761:n1"
    write(d1, (T0, started(8761).model_copy(update={"daemon_id": dead})), *run_job("j", T0 + 1))
    write(d2, (T0 + 0.5, started(8762).model_copy(update={"daemon_id": "h2:8762:n2"})))
    logs = LogSet([str(d1), str(d2)])
    view = view_of(logs)
    assert [s["status"] for s in view.snapshot(T0 + 2).sources] == ["running", "running"]
    assert view.snapshot(T0 + 2).tokens["in_use"] == 1

    claim = JobClaimed(
        job_id="j", daemon="h2:8762:n2", fence=2, taken_over=True, previous_owner=dead
    )
    write(d2, (T0 + 20, claim), *run_job("j", T0 + 20.5)[1:])
    view.apply_merged(logs.poll())
    snap = view.snapshot(T0 + 21)
    assert [(s["status"], s["stages_running"]) for s in snap.sources] == [
        ("lost", 0),
        ("running", 1),
    ]
    assert snap.tokens["in_use"] == 1, "only d2's call is in flight"
    assert re.search(r"127\.0\.0\.1:8761 lost", screen(view))

    write(d1, (T0 + 30, started(8761).model_copy(update={"daemon_id": "h1:9999:n1"})))
    view.apply_merged(logs.poll())
    logs.close()
    assert [s["status"] for s in view.snapshot(T0 + 31).sources] == ["running", "running"]


def test_a_glob_picks_up_a_log_created_later(tmp_path: Path) -> None:
    """A daemon started after the console: its log matches the glob and joins at the next look."""
    write(tmp_path / "d1" / "events.log", (T0, started(8761)))
    logs = LogSet([str(tmp_path / "*" / "events.log")], rescan_s=0.05)
    view = OpsView()
    view.apply_merged(logs.poll())
    assert len(logs.followers) == 1 and view.snapshot().sources == []
    write(tmp_path / "d2" / "events.log", (T0 + 1, started(8762)), *run_job("late", T0 + 2))
    tick, deadline = threading.Event(), time.monotonic() + 10
    while not any(j.job_id == "late" for j in view.snapshot().active):
        assert time.monotonic() < deadline, "the new log was never followed"
        tick.wait(0.05)
        view.apply_merged(logs.poll())
    logs.close()
    snap = view.snapshot(T0 + 3)
    assert [s["name"] for s in snap.sources] == ["127.0.0.1:8761", "127.0.0.1:8762"]
    assert snap.active[0].owner == "127.0.0.1:8762"


def test_a_glob_that_matches_nothing_says_it_waits(tmp_path: Path) -> None:
    """Live, a glob with no file yet is a waiting line, not an error; once, it is an error."""
    pattern = str(tmp_path / "*" / "events.log")
    logs = LogSet([pattern, str(tmp_path / "later.log")], rescan_s=2)
    assert logs.poll() == [] and not logs.exists()
    assert logs.waiting() == [
        f"{pattern}: no file matches yet; looking again every 2 s",
        f"{tmp_path / 'later.log'}: no such file yet; waiting for it",
    ]
    assert logs.check() == f"{pattern}: no file matches"


def test_missing_and_unreadable_logs_are_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, a folder, a glob matching nothing: exit 2, one line, no traceback."""
    (d1, *_) = cluster(tmp_path)
    missing, pattern = tmp_path / "d9" / "events.log", str(tmp_path / "none-*" / "events.log")
    assert cli_main(["console", "--log", str(d1), "--log", str(missing), "--once"]) == 2
    assert cli_main(["console", "--log", str(d1), "--log", str(tmp_path), "--once"]) == 2
    assert cli_main(["console", "--log", pattern, "--once"]) == 2
    assert cli_main(["report", str(d1), "--log", str(missing)]) == 2
    assert cli_main(["report", "--log", pattern]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"briefd console: {missing}: no such file",
        f"briefd console: {tmp_path}: not a regular file",
        f"briefd console: {pattern}: no file matches",
        f"briefd report: {missing}: cannot read: no such file",
        f"briefd report: {pattern}: cannot read: no file matches",
    ]


def test_console_once_and_report_over_a_glob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--log GLOB`` once: the three daemons on one screen; report: totals over all logs."""
    paths = cluster(tmp_path / "logs")
    pattern = str(tmp_path / "logs" / "*" / "events.log")
    assert cli_main(["console", "--log", pattern, "--once", "--width", "180"]) == 0
    out = capsys.readouterr().out
    assert "3 logs: 127.0.0.1:8761 running, 127.0.0.1:8762 stopped" in out
    assert re.search(r"c-1 +│ 127\.0\.0\.1:8763 +│ running", out)

    assert cli_main(["report", "--log", pattern, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["log"]["files"] == [str(p) for p in paths] and data["log"]["records"] == 19
    assert data["jobs_by_status"] == {"succeeded": 1} and data["spend"]["total_usd"] == 0.25
    assert data["totals"]["stage_attempts"] == 3 and len(data["sources"]) == 3
    assert data["daemon"] is None and data["tokens"]["capacity"] == 6
    assert cli_main(["report", str(paths[1]), "--json"]) == 0  # one log, as before
    single = json.loads(capsys.readouterr().out)
    assert "sources" not in single and single["daemon"]["state"] == "stopping"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_console_follows_a_glob_in_tmux(tmp_path: Path) -> None:
    """In a real terminal: the console on a glob shows one daemon, then all three as their
    logs appear, with the daemon column and the per-daemon token lines."""
    from test_console_live import Tmux

    root = tmp_path / "logs"
    write(root / "d1" / "events.log", (time.time(), started(8761)))
    pattern = str(root / "*" / "events.log")
    console = [sys.executable, "-m", "briefd", "console", "--log", pattern]
    console += ["--interval", "0.1", "--rescan", "0.2"]
    command = f"unset COLUMNS LINES && exec {shlex.join(console)}"
    tmux = Tmux(tmp_path)
    tmux.run("-f", "/dev/null", "new-session", "-d", "-s", "console", "-x", "170", "-y", "40")
    tmux.run("respawn-pane", "-k", "-t", "console", command)

    def wait_for(seen: Callable[[str], bool], what: str) -> str:
        tick, deadline = threading.Event(), time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = tmux.screen()
            if seen(text):
                return text
            tick.wait(0.1)
        raise AssertionError(f"never saw {what}; last screen:\n{text}")

    try:
        first = wait_for(lambda s: "daemon running" in s, "the first daemon")
        assert "logs:" not in first
        now = time.time()
        write(root / "d2" / "events.log", (now, started(8762)), *run_job("b-1", now))
        write(root / "d3" / "events.log", (now, started(8763)), *run_job("c-1", now))
        text = wait_for(lambda s: "3 logs:" in s and "c-1" in s, "three logs")
        assert re.search(r"b-1 +│ 127\.0\.0\.1:8762 +│ running", text)
        assert "127.0.0.1:8762: tokens 1/2" in text and "127.0.0.1:8761: tokens 0/2" in text
        (tmp_path / "screen.txt").write_text(text, encoding="utf-8")
    finally:
        tmux.kill()
