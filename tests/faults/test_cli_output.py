"""What the command line writes and prints when its disk or its upstream misbehaves.

``briefd run`` is run as a user runs it (a real subprocess), against the
simulator or the raw-socket fake upstream. A full disk is a real kernel refusal:
the child runs under ``RLIMIT_FSIZE``, so a write past the limit fails with
``EFBIG`` as it would with ``ENOSPC`` (the tests run as root, who ignores
permission bits but not resource limits).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon

from briefd.cli import _report
from briefd.config import load_pipeline
from briefd.daemon import client_cli
from briefd.daemon.client import DaemonError
from briefd.messages import ErrorCode, JobInfo, JobState, StageState
from briefd.output import Written
from briefd.sim.server import SimServer
from briefd.store.base import StageRow, closing_result
from faults.upstream import FORGED_LINE, TERMINAL_TEXT, FakeUpstream, error_with_escapes

DOCUMENTS = ("briefing.md", "plays.md", "procurement.json", "annex.json")
STAGE_NAMES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
# Runs the CLI with a per-file size limit: a write past it fails (EFBIG) like a full disk.
LIMITED = (
    "import resource, sys; from briefd.cli import main; "
    "limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)); "
    "sys.exit(main(sys.argv[2:]))"
)


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _job_file(tmp_path: Path, job: dict[str, Any]) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def _assert_clean_terminal_text(text: str) -> None:
    """No raw escape sequence, and no line of its own that a forger chose."""
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text, repr(text)
    assert FORGED_LINE not in text.splitlines(), text
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        assert not (isinstance(event, dict) and event.get("event") == "Forged"), line


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_call(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """``--out`` naming a file, or a place below a file: exit 2, one line naming it, no call."""
    env = child_env(BRIEFD_BASE_URL=sim.base_url)
    job = _job_file(tmp_path, make_job())
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a directory\n")
    for out in (a_file, a_file / "below"):
        proc = _run(briefd_cmd("run", str(job), "--out", str(out)), env, tmp_path)
        assert proc.returncode == 2, (out, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(out) in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert a_file.read_text() == "not a directory\n"
    assert sim.stats().total_requests == 0


def test_a_disk_that_fills_during_the_run_keeps_the_documents_and_exits_1(
    sim: SimServer, tmp_path: Path, make_job: Any, child_env: Any
) -> None:
    """The documents fit but result.json does not: each document stays whole, result.json is
    reported as not written (no temp file left), the result is still printed on stdout, exit
    1, no speed-up claimed, no traceback."""
    env = child_env(BRIEFD_BASE_URL=sim.base_url, BRIEFD_BUFFER_RESULTS="false")
    job = _job_file(tmp_path, make_job())
    first = tmp_path / "first"
    proc = _run(
        [sys.executable, "-m", "briefd", "run", str(job), "--out", str(first)], env, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    expected = {name: (first / name).read_text() for name in DOCUMENTS}
    limit = max((first / name).stat().st_size for name in DOCUMENTS)
    assert (first / "result.json").stat().st_size > limit

    out = tmp_path / "out"
    cmd = [sys.executable, "-c", LIMITED, str(limit), "run", str(job), "--out", str(out)]
    proc = _run(cmd, env, tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert {name: (out / name).read_text() for name in DOCUMENTS} == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(DOCUMENTS)  # no temp file left
    failed = [line for line in proc.stderr.splitlines() if str(out / "result.json") in line]
    assert failed and "not written" in failed[0], proc.stderr
    assert "speed-up" not in proc.stdout
    printed = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert printed["status"] == "succeeded"
    assert printed["documents"]["BRIEFING_MD"] == expected["briefing.md"]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def test_run_escapes_upstream_error_text_and_claims_no_speed_up_when_failed(
    upstream: FakeUpstream, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """An upstream error carrying escape sequences and CR LF + a forged JSON log line reaches
    stderr escaped (visible, on the same line); a failed run prints no speed-up."""
    upstream.on("*", error_with_escapes(400))
    env = child_env(BRIEFD_BASE_URL=upstream.base_url, BRIEFD_LOG_FORMAT="json")
    job = _job_file(tmp_path, make_job())
    proc = _run(briefd_cmd("run", str(job), "--out", str(tmp_path / "out")), env, tmp_path)
    assert proc.returncode == 1, proc.stderr
    _assert_clean_terminal_text(proc.stderr)
    _assert_clean_terminal_text(proc.stdout)
    assert "\\u001b" in proc.stderr and "error BRIEFING_MD HTTP_ERROR" in proc.stderr
    assert "speed-up" not in proc.stdout


def test_client_commands_escape_upstream_error_text(
    upstream: FakeUpstream, tmp_path: Path, make_job: Any, briefd_cmd: Any
) -> None:
    """``briefd submit --wait`` and ``briefd status`` print a job's upstream errors escaped."""
    upstream.on("*", error_with_escapes(400))
    daemon = Daemon(tmp_path, upstream.base_url).start()
    try:
        job = _job_file(tmp_path, make_job("esc-1"))
        env = {**daemon.env, "BRIEFD_TOKEN_FILE": str(daemon.data_dir / "token")}
        submitted = _run(briefd_cmd("submit", str(job), "--wait", "--timeout", "60"), env, tmp_path)
        assert submitted.returncode == 1, submitted.stderr
        status = _run(briefd_cmd("status", "esc-1"), env, tmp_path)
        assert status.returncode == 0, status.stderr
    finally:
        daemon.stop()
    for proc in (submitted, status):
        _assert_clean_terminal_text(proc.stdout)
        _assert_clean_terminal_text(proc.stderr)
    assert "\\u001b" in submitted.stderr and "\\u001b" in status.stdout


def test_every_printer_escapes_text_whatever_layer_let_it_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Defence in depth: an error message still raw when it reaches the command line (the
    upstream layer escapes what it builds, but not every message is built there) is printed
    escaped by ``briefd run``'s summary and by every client command that shows one."""
    raw = f"bad request {TERMINAL_TEXT}"
    stages = {s: StageRow(state=StageState.PENDING, attempts=1) for s in STAGE_NAMES}
    result = closing_result(
        load_pipeline(), "raw-1", stages, JobState.FAILED, (ErrorCode.HTTP_ERROR, raw, raw)
    )
    info = JobInfo(
        job_id="raw-1",
        status=JobState.FAILED,
        stages=dict.fromkeys(STAGE_NAMES, StageState.FAILED),
        progress=0.0,
        submitted_at=0.0,
        errors=result.errors,
    )
    assert _report(result, Written()) == 1
    client_cli._print_result(result)
    client_cli._print_info(info)
    assert client_cli._fail(DaemonError(400, "invalid_job", raw)) == 2
    out, err = capsys.readouterr()
    for text in (out, err):
        _assert_clean_terminal_text(text)
    assert err.count("\\u001b]0;pwned") >= 2 * len(STAGE_NAMES) + 1
    assert out.count("\\u001b]0;pwned") == len(STAGE_NAMES)
    assert "speed-up" not in out
