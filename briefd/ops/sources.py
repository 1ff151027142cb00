"""Several event logs read as one: paths and globs, files that appear later, one merged stream.

A cluster (several daemons, one database) writes one event log per daemon.
``briefd console`` and ``briefd report`` take several ``--log`` options, each a
file or a quoted glob (``'/var/log/briefd/*/events.log'``); every file is one
*source*, named by its daemon in the view (:mod:`briefd.ops.daemons`). A glob
is looked at again every few seconds, so a daemon started later joins the
console; a file it no longer matches is still followed (a daemon's folder
moved away still has its last word). Each file is read by the one-log
:class:`~briefd.ops.eventlog.LogFollower` (rotation, half-written lines), and
what the files added since the last look is merged in time order, each file's
own order kept (:func:`heapq.merge`). A glob should match the live files only,
not rotated ones: each match is taken for another daemon.

Nothing here raises for a file that is missing or unreadable: the reason is kept
as one line naming the file, for the console's screen or the command's stderr.
"""

from __future__ import annotations

import errno
import glob
import heapq
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from briefd.ops.eventlog import LogFollower, ReadStats, Record, read_logs

RESCAN_S = 2.0
"""Seconds between two looks for new files matching a glob."""

Merged = list[tuple[str, Record]]
"""``(source, record)`` pairs in time order, for :meth:`briefd.ops.view.OpsView.apply_merged`."""


def is_glob(spec: str) -> bool:
    """Whether ``spec`` is a pattern (``*``, ``?``, ``[``) rather than one file's path."""
    return glob.has_magic(spec)


def _matches(pattern: str) -> list[str]:
    """The regular files ``pattern`` matches now, sorted (folders it matches are not logs)."""
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def _reason(err: OSError) -> str:
    return (err.strerror or type(err).__name__).lower()


def merge(batches: Iterable[Sequence[tuple[str, Record]]]) -> Merged:
    """Each source's records, interleaved by timestamp, each source's own order kept."""
    return list(heapq.merge(*batches, key=lambda pair: pair[1].ts))


class LogSet:
    """The files named by some paths and globs, followed together (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[str],
        *,
        rescan_s: float = RESCAN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.specs = list(specs)
        self.followers: dict[str, LogFollower] = {}
        self.problems: dict[str, str] = {}
        """Files that could not be read at the last look, with the reason (one line each)."""
        self._patterns = [s for s in self.specs if is_glob(s)]
        self._known: set[str] = set()  # real paths, so one file named twice is followed once
        self._rescan_s, self._clock = rescan_s, clock
        self._next_scan = 0.0
        for spec in self.specs:
            if not is_glob(spec):
                self._add(spec)
        self.scan()

    def _add(self, path: str) -> bool:
        real = os.path.realpath(path)
        if real in self._known:
            return False
        self._known.add(real)
        self.followers[path] = LogFollower(path)
        return True

    def scan(self) -> list[str]:
        """Look at every glob again; the files newly followed."""
        self._next_scan = self._clock() + self._rescan_s
        return [p for pattern in self._patterns for p in _matches(pattern) if self._add(p)]

    def poll(self) -> Merged:
        """What every file added since the last call, merged; globs looked at when due."""
        if self._clock() >= self._next_scan:
            self.scan()
        batches = []
        for path, follower in self.followers.items():
            try:
                records = follower.read()
            except OSError as err:  # not readable (yet): said on screen, tried again next time
                self.problems[path] = f"{path}: cannot read: {_reason(err)}"
                continue
            self.problems.pop(path, None)
            batches.append([(path, r) for r in records])
        return merge(batches)

    def waiting(self) -> list[str]:
        """One line per glob that matches nothing yet and per named file not there yet."""
        lines = [
            f"{p}: no file matches yet; looking again every {self._rescan_s:g} s"
            for p in self._patterns
            if not any(f in self.followers for f in _matches(p))
        ]
        lines += [
            f"{spec}: no such file yet; waiting for it"
            for spec in self.specs
            if not is_glob(spec) and not os.path.exists(spec)
        ]
        return lines

    def check(self) -> str | None:
        """For a one-shot read: the first path that is missing or not a file, or glob that
        matches nothing, as one line naming it; None when every one can be read."""
        for spec in self.specs:
            if is_glob(spec):
                if not _matches(spec):
                    return f"{spec}: no file matches"
            elif not os.path.exists(spec):
                return f"{spec}: no such file"
            elif not os.path.isfile(spec):
                return f"{spec}: not a regular file"
        return None

    def exists(self) -> bool:
        """Whether any followed file is there yet."""
        return any(f.path.exists() for f in self.followers.values())

    def close(self) -> None:
        """Close every file."""
        for follower in self.followers.values():
            follower.close()


def expand(specs: Sequence[str]) -> list[str]:
    """Every file the paths and globs name, in order, each once.

    Raises ``FileNotFoundError`` (naming the glob) for a glob that matches no file;
    a plain path is returned as given, for the reader to say what is wrong with it.
    """
    out: list[str] = []
    for spec in specs:
        found = _matches(spec) if is_glob(spec) else [spec]
        if not found:
            raise FileNotFoundError(errno.ENOENT, "no file matches", spec)
        out += [f for f in found if f not in out]
    return out


def read_sources(sources: dict[str, list[Path]]) -> tuple[Merged, ReadStats]:
    """Finished logs, each source's files oldest first, merged in time order; totals of all.

    Raises ``OSError`` naming the file that is missing or cannot be read.
    """
    batches: list[list[tuple[str, Record]]] = []
    total = ReadStats()
    for key, files in sources.items():
        records, stats = read_logs(files)
        batches.append([(key, r) for r in records])
        for name in ("lines", "records", "ignored", "partial"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
    return merge(batches), total
