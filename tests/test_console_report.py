"""``briefd report`` and ``briefd console --once`` on a log recorded from real jobs.

The log is recorded at test time (tests/data/live_jobs.py: real jobs through
real pipelines against the simulated server, one per kind of trouble), so it
cannot go stale; every figure is checked against the jobs' own results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest

from briefd.actors.metrics import LatencySummary
from briefd.cli import main as cli_main
from briefd.messages import ErrorCode, JobResult
from briefd.ops.eventlog import parse_line, to_message

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "data" / "live_jobs.py"
API_KEY = "live-jobs-secret-0123456789"  # what live_jobs.py configures


@dataclass(frozen=True)
class Recording:
    """A recorded event log and the results of the jobs that wrote it."""

    log: Path
    results: list[JobResult]


def child_env() -> dict[str, str]:
    """This environment without BRIEFD_* settings that would change the recording."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """Run the recorded job set once for this module (about four seconds)."""
    where = tmp_path_factory.mktemp("recording")
    log, results = where / "briefd.log", where / "results.jsonl"
    subprocess.run(
        [sys.executable, str(RUNNER), "--log", str(log), "--results", str(results)],
        cwd=where,
        env=child_env(),
        check=True,
        timeout=120,
    )
    lines = results.read_text(encoding="utf-8").splitlines()
    return Recording(log, [JobResult.model_validate_json(x) for x in lines])


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``briefd ARGS`` in-process (through the CLI's command table); exit code and stdout."""
    code = cli_main(list(args))
    return code, capsys.readouterr().out


def report_json(
    capsys: pytest.CaptureFixture[str], *files: Path, flags: tuple[str, ...] = ()
) -> Any:
    """``briefd report FILES --json``, parsed."""
    code, out = run_cli(capsys, "report", *map(str, files), "--json", *flags)
    assert code == 0, out
    return json.loads(out)


def summary(values: list[int]) -> dict[str, float]:
    """LatencySummary as report --json writes it."""
    s = LatencySummary.of(values)
    return {"count": s.count, "p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "max_ms": s.max_ms}


def without_file_names(data: Any) -> Any:
    """A report with the file list and the as-of time removed, to compare two readings."""
    data = dict(data)
    data["log"] = {k: v for k, v in data["log"].items() if k != "files"}
    return data


def test_recording_holds_each_kind_of_trouble(recording: Recording) -> None:
    """The recorded jobs ended as planned, so the checks below check something."""
    by_id = {r.job_id: r for r in recording.results}
    assert (
        by_id["clean-1"].status == "succeeded"
        and by_id["retry-1"].metrics.attempts["PLAYS_MD"] == 2
    )
    assert by_id["timeout-1"].metrics.attempts["BRIEFING_MD"] == 2
    assert [e.code for e in by_id["quality-1"].errors] == [ErrorCode.INVALID_JSON]
    assert by_id["quality-1"].fallbacks == ["PROCUREMENT_JSON"]
    assert [e.code for e in by_id["fail-1"].errors] == [ErrorCode.HTTP_ERROR]
    assert by_id["sequential-1"].parallel is False


def test_report_json_matches_the_jobs_results(
    recording: Recording, capsys: pytest.CaptureFixture[str]
) -> None:
    """Statuses, latency table, speed-up, retries, timeouts and rates equal the results' own."""
    data = report_json(capsys, recording.log)
    results = [r for r in recording.results if r.status != "cancelled"]
    assert data["jobs_by_status"] == dict(Counter(r.status.value for r in recording.results))
    assert data["total"] == summary([r.metrics.total_ms for r in results])
    assert data["parallel_group"] == summary([r.metrics.parallel_group_ms for r in results])
    assert data["sequential_group"] == summary([r.metrics.sequential_group_ms for r in results])
    stages = {s for r in results for s in r.metrics.stages_ms}
    for stage in stages:
        expected = [r.metrics.stages_ms[stage] for r in results if r.metrics.attempts[stage] > 0]
        assert data["stage_latency"][stage] == summary(expected), stage
    speedups = [r.metrics.speedup_ratio for r in results if r.parallel]
    assert data["mean_speedup"] == round(fmean(speedups), 3)  # fsum: any order, same answer

    attempts = sum(n for r in results for n in r.metrics.attempts.values())
    errors = [e for r in results for e in r.errors if e.code != ErrorCode.CANCELLED]
    finished = sum(1 for r in results for n in r.metrics.attempts.values() if n > 0)
    quality = [e for e in errors if e.code in (ErrorCode.INVALID_JSON, ErrorCode.TRUNCATED)]
    totals = data["totals"]
    assert totals["stage_attempts"] == attempts
    assert totals["retries"] == attempts - finished
    assert totals["stages_failed"] == len(errors) and totals["quality_failures"] == len(quality)
    assert totals["timeouts"] == 1 and totals["fallbacks"] == sum(len(r.fallbacks) for r in results)
    assert data["rates"] == {
        "error_rate": round(len(errors) / finished, 4),
        "timeout_rate": round(1 / attempts, 4),
        "quality_rate": round(len(quality) / finished, 4),
    }
    assert data["warnings"] == ["error", "quality"]  # 2/28 > 5%, and any quality failure
    assert data["tokens"]["capacity"] == 2 and data["tokens"]["peak"] == 2
    assert data["tokens"]["cooldowns"] == 1 and data["peak_stages_running"] == 2
    assert data["log"]["ignored"] == 0 and data["log"]["partial"] == 0


def test_every_line_parses_back_into_its_model(recording: Recording) -> None:
    """The log and the message models agree line by line; no secret, no document text."""
    text = recording.log.read_text(encoding="utf-8")
    assert API_KEY not in text
    for result in recording.results:
        for document in result.documents.values():
            if isinstance(document, str):
                assert document[:40] not in text
    events = Counter()
    for line in text.splitlines():
        record = parse_line(line)
        assert record is not None, line
        if record.event != "log":
            events[to_message(record).type] += 1
    assert events["JobCompleted"] == len(recording.results) == events["LatencyMeasured"]
    assert events["TokenGranted"] == events["TokenReleased"] > 0
    assert events["RateLimitCooldown"] == 1


def test_console_once_shows_jobs_latency_and_warnings(
    recording: Recording, capsys: pytest.CaptureFixture[str]
) -> None:
    """One snapshot names every job and stage, the latency table, the speed-up and the warning."""
    code, out = run_cli(capsys, "console", "--log", str(recording.log), "--once", "--width", "160")
    assert code == 0
    for result in recording.results:
        assert result.job_id in out
    for stage in ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON"):
        assert stage in out
    assert "ROLLBACK SIGNAL error rate" in out and "ROLLBACK SIGNAL quality rate" in out
    assert "timeout rate" not in out.split("latency")[0], "1 timeout in 31 attempts is under 10%"
    totals = sorted(r.metrics.total_ms for r in recording.results)
    assert f"{LatencySummary.of(totals).p50_ms:.0f}" in out
    speedups = [r.metrics.speedup_ratio for r in recording.results if r.parallel]
    assert f"speed-up (sequential work / wall) {fmean(speedups):.2f}x" in out
    assert "↩ fallback" in out and "✗ failed" in out and "INVALID_JSON" in out


def test_truncated_last_line_is_skipped(
    recording: Recording, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A log cut mid-line reads as the log without that line, with one half-written line."""
    lines = recording.log.read_text(encoding="utf-8").splitlines()
    cut, before = tmp_path / "cut.log", tmp_path / "before.log"
    cut.write_text(
        "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2], encoding="utf-8"
    )
    before.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    got, want = report_json(capsys, cut), report_json(capsys, before)
    assert got["log"]["partial"] == 1 and want["log"]["partial"] == 0
    for key in ("jobs_by_status", "total", "stage_latency", "totals", "rates"):
        assert got[key] == want[key], key
    code, out = run_cli(capsys, "console", "--log", str(cut), "--once", "--width", "160")
    assert code == 0 and "sequential-1" in out


def test_rotated_files_read_in_order_give_the_same_report(
    recording: Recording, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The log split where a rotation would split it reports exactly as the whole."""
    lines = recording.log.read_text(encoding="utf-8").splitlines(keepends=True)
    old, new = tmp_path / "briefd.2026-01-01_00-00-00.log", tmp_path / "briefd.log"
    half = len(lines) // 2
    old.write_text("".join(lines[:half]), encoding="utf-8")
    new.write_text("".join(lines[half:]), encoding="utf-8")
    whole = report_json(capsys, recording.log)
    split = report_json(capsys, old, new)
    assert without_file_names(split) == without_file_names(whole)


def test_unknown_events_and_versions_change_nothing(
    recording: Recording, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Lines of a future version, unknown events and garbage are skipped, not fatal."""
    noisy = tmp_path / "noisy.log"
    extra = [
        '{"v":2,"ts":1,"event":"JobCompleted","job_id":"x","result":"in a new shape"}',
        '{"v":1,"ts":1,"level":"INFO","event":"FromTheFuture","job_id":"clean-1","stage":null}',
        "not json at all",
    ]
    noisy.write_text(
        recording.log.read_text(encoding="utf-8") + "\n".join(extra) + "\n", encoding="utf-8"
    )
    plain, got = report_json(capsys, recording.log), report_json(capsys, noisy)
    assert got["log"]["ignored"] == 2 and got["log"]["records"] == plain["log"]["records"] + 1
    for key in ("jobs_by_status", "total", "stage_latency", "totals", "rates", "errors"):
        assert got[key] == plain[key], key


def test_thresholds_baseline_and_check(
    recording: Recording, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--check exits 1 on a crossed signal; looser thresholds or this log as baseline clear it."""
    log = str(recording.log)
    assert run_cli(capsys, "report", log, "--check")[0] == 1
    loose = ("--error-threshold", "0.2", "--quality-threshold", "0.1")
    assert run_cli(capsys, "report", log, "--check", *loose)[0] == 0
    baseline = tmp_path / "baseline.json"
    baseline.write_text(run_cli(capsys, "report", log, "--json")[1], encoding="utf-8")
    code, out = run_cli(capsys, "report", log, "--check", "--baseline", str(baseline))
    assert code == 0 and "ROLLBACK SIGNAL" not in out
    strict = report_json(capsys, recording.log, flags=("--timeout-threshold", "0.01"))
    assert "timeout" in strict["warnings"]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing log or a bad baseline is one line on stderr and exit 2."""
    assert cli_main(["report", str(tmp_path / "absent.log")]) == 2
    assert cli_main(["console", "--log", str(tmp_path / "absent.log"), "--once"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert cli_main(["report", str(bad), "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "absent.log" in err and "not a `briefd report --json`" in err


def test_report_names_why_a_file_cannot_be_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A missing file and a folder each get one line with the reason, exit 2."""
    assert cli_main(["report", str(tmp_path / "absent.log")]) == 2
    assert cli_main(["report", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"briefd report: {tmp_path / 'absent.log'}: cannot read: no such file",
        f"briefd report: {tmp_path}: cannot read: not a regular file",
    ]


def test_check_on_a_log_without_events_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--check`` on a file that holds no briefd event exits non-zero: nothing was checked."""
    log = tmp_path / "other.log"
    log.write_text("GET / 200\nnot json either\n", encoding="utf-8")
    assert cli_main(["report", str(log), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"briefd report: {log}: no briefd events in 2 lines; nothing to check"
    assert cli_main(["report", str(log)]) == 0  # without --check it is only an empty report
