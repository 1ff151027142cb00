"""Following the event log: half-written lines, rotation, truncation, strangers in the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from briefd.ops.eventlog import LogFollower, Record, parse_line, read_logs


def line(n: int, event: str = "StageStarted", v: int = 1) -> str:
    """A v1 line for job ``n``."""
    return json.dumps(
        {"v": v, "ts": 1000.0 + n, "level": "INFO", "event": event, "job_id": f"j{n}"}
    )


def append(path: Path, text: str) -> None:
    """Append raw text (a writer mid-line leaves no newline)."""
    with path.open("a", encoding="utf-8") as out:
        out.write(text)


def ids(records: list[Record]) -> list[str | None]:
    """The job ids of records, in order."""
    return [r.job_id for r in records]


def test_half_written_line_waits_for_its_newline(tmp_path: Path) -> None:
    """A line without its newline is held back, then delivered whole."""
    path = tmp_path / "b.log"
    full = line(2)
    append(path, line(1) + "\n" + full[:17])
    follower = LogFollower(path)
    assert ids(follower.read()) == ["j1"]
    assert follower.read() == []
    append(path, full[17:] + "\n")
    assert ids(follower.read()) == ["j2"]
    assert follower.stats.partial == 0 and follower.stats.ignored == 0


def test_rotation_drains_the_old_file_then_reads_the_new(tmp_path: Path) -> None:
    """Renamed away and replaced: the old file's tail first, then the new file from its start."""
    path = tmp_path / "b.log"
    append(path, line(1) + "\n")
    follower = LogFollower(path)
    assert ids(follower.read()) == ["j1"]
    append(path, line(2) + "\n" + line(3)[:10])  # j3 is cut short by the rotation
    os.rename(path, tmp_path / "b.2026-01-01.log")
    assert ids(follower.read()) == ["j2"], "rotated, no new file yet: the old one is still read"
    append(path, line(4) + "\n")
    assert ids(follower.read()) == ["j4"]
    assert follower.stats.partial == 1
    follower.close()


def test_truncated_in_place_starts_over(tmp_path: Path) -> None:
    """copytruncate-style rotation: the file shrinks under the reader, which reads it anew."""
    path = tmp_path / "b.log"
    append(path, line(1) + "\n" + line(2) + "\n")
    follower = LogFollower(path)
    assert ids(follower.read()) == ["j1", "j2"]
    path.write_text(line(3) + "\n", encoding="utf-8")
    assert ids(follower.read()) == ["j3"]
    follower.close()


def test_a_missing_file_is_waited_for(tmp_path: Path) -> None:
    """The console may start before the daemon has made its log."""
    path = tmp_path / "later.log"
    follower = LogFollower(path)
    assert follower.read() == []
    append(path, line(1) + "\n")
    assert ids(follower.read()) == ["j1"]
    follower.close()


def test_other_versions_garbage_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Only v1 objects become records; unknown events are records the view will ignore."""
    path = tmp_path / "b.log"
    append(
        path,
        "\n".join(
            [line(1), line(2, v=2), "not json", "[1, 2]", "", line(3, event="FromTheFuture"), ""]
        ),
    )
    follower = LogFollower(path)
    records = follower.read()
    assert [(r.job_id, r.event) for r in records] == [
        ("j1", "StageStarted"),
        ("j3", "FromTheFuture"),
    ]
    assert follower.stats.ignored == 3 and follower.stats.records == 2


def test_read_logs_takes_a_whole_last_line_and_counts_a_cut_one(tmp_path: Path) -> None:
    """A finished log: a last line without newline counts if whole, else as half-written."""
    whole, cut = tmp_path / "a.log", tmp_path / "b.log"
    append(whole, line(1) + "\n" + line(2))
    append(cut, line(3) + "\n" + line(4)[:20])
    records, stats = read_logs([whole, cut])
    assert ids(records) == ["j1", "j2", "j3"]
    assert (stats.lines, stats.records, stats.partial) == (4, 3, 1)
    with pytest.raises(FileNotFoundError):
        read_logs([tmp_path / "absent.log"])


def test_parse_line_accepts_bytes_and_rejects_non_v1() -> None:
    """parse_line is the one gate: a v1 object with an event name and a time."""
    assert parse_line(line(1).encode()) is not None
    assert parse_line(json.dumps({"v": 1, "event": "X"})) is None  # no ts
    assert parse_line(json.dumps({"v": "1", "ts": 1, "event": "X"})) is None
    assert parse_line(b"\xff\xfe") is None
