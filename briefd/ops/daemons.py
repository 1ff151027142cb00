"""Each followed log's daemon, for the operations view: its life, its tokens, its calls in flight.

A console can follow several logs at once (a cluster: several daemons, one
database). What belongs to one process, its execution tokens, the stages
holding them and whether it is up, is kept per log (a *source*), so that one
daemon's restart clears only its own figures, and summed for the whole. With a
single log the figures are that log's own, exactly as before there were several.

Daemons of one cluster (their ``DaemonStarted`` names a ``daemon_id``: they share a
PostgreSQL database) share one budget: each one's token events say the *cluster's*
K (and window W) beside the calls that daemon has in flight. The cluster's line is
therefore K and W as the newest event said them, never their sum over daemons, and
its calls in flight are the sum of each daemon's (a daemon whose jobs were taken
over counts none). A daemon's ``waiting`` is its last word on its own queue: it is
believed only up to the stages its active jobs still have to run, so it goes to 0
when they end, with or without another token event.

Sources are named here, by their daemon (``DaemonStarted``'s address, with its
pid when two share one), else by the log's folder: the header and the jobs
table must tell them apart in a few columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from briefd.ops.eventlog import ENVELOPE, Record

DAEMON_STATES = {"DaemonStarted": "running", "DaemonReloading": "reloaded"}
"""A daemon event's state; any other daemon event (``DaemonStopping``) is ``stopping``."""


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _fresh_tokens() -> dict[str, Any]:
    return {"in_use": 0, "capacity": 0, "peak": 0, "waiting": None}


@dataclass
class Source:
    """One log as the view knows it: its daemon's last word, its tokens, its stages in flight."""

    key: str
    daemon: dict[str, Any] | None = None
    ident: dict[str, Any] = field(default_factory=dict)
    """``url``, ``pid`` and ``max_concurrent`` of the last ``DaemonStarted`` (kept past
    ``DaemonStopping``)."""
    tokens: dict[str, Any] = field(default_factory=_fresh_tokens)
    running: set[tuple[str, str]] = field(default_factory=set)
    newest: float = 0.0
    daemon_id: str | None = None
    """The cluster's name for its daemon (``DaemonStarted.daemon_id``), None on one machine."""
    lost: dict[str, Any] | None = None
    """Set when another daemon took this one's jobs over (its lease lapsed): ``since``, ``by``."""

    def capacity(self) -> int:
        """Its tokens, as the limiter last said, else as the daemon said when it started."""
        cap = self.tokens["capacity"] or self.ident.get("max_concurrent")
        return cap if isinstance(cap, int) else 0

    def status(self, now: float) -> str:
        """``running``, ``stopping``, ``stopped`` (its grace has passed), ``lost`` (killed or
        cut off: another daemon took its jobs over, and it has written nothing since), or
        ``no daemon``. A log cannot say its process died; a takeover in another log can."""
        if self.daemon is None:
            return "no daemon" if self.newest else "no events yet"
        if self.lost is not None and self.newest <= self.lost["since"]:
            return "lost"
        state = str(self.daemon["state"])
        if state == "reloaded":
            return "running"
        if state == "stopping":
            grace = self.daemon.get("grace_s")
            grace = float(grace) if isinstance(grace, int | float) else 0.0
            return "stopped" if now >= self.daemon["since"] + grace else "stopping"
        return state

    def candidates(self) -> list[str]:
        """Names from the most readable to the most precise (see :meth:`Sources.names`)."""
        folder = Path(self.key).parent.name or self.key
        url, pid = self.ident.get("url"), self.ident.get("pid")
        if not isinstance(url, str):
            return [folder, folder, folder, self.key]
        address = urlsplit(url).netloc or url
        return [address, f"{address} pid {pid}", folder, self.key]


class Sources:
    """Every source's :class:`Source`, the daemon-wide figures, and their sums over sources."""

    def __init__(self) -> None:
        self.by_key: dict[str, Source] = {}
        self.peak_running = 0
        self.peak_in_use = 0
        self.cluster: dict[str, tuple[float, int]] = {}
        """``capacity`` and ``window`` of the cluster: (time, value) of the newest event of
        any cluster daemon that said it."""

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, key: str) -> Source:
        """The source named ``key``, made on its first record."""
        source = self.by_key.get(key)
        if source is None:
            source = self.by_key[key] = Source(key)
        return source

    def token(self, source: Source, record: Record) -> None:
        """Token holders are the calls in flight: the stages running in parallel right now."""
        tokens = source.tokens
        tokens["in_use"] = _int(record.data.get("in_use"))
        tokens["capacity"] = _int(record.data.get("capacity"), tokens["capacity"])
        tokens["peak"] = max(tokens["peak"], tokens["in_use"])
        if "waiting" in record.data:  # a rate limiter that reports its queue
            tokens["waiting"] = _int(record.data.get("waiting"))
        if isinstance(record.data.get("window"), int):  # the adaptive window W
            tokens["window"] = record.data["window"]
        if source.daemon_id is not None:  # one budget for the cluster: its newest word
            for name in ("capacity", "window"):
                value = _int(record.data.get(name), -1)
                if value >= 0 and record.ts >= self.cluster.get(name, (float("-inf"), 0))[0]:
                    self.cluster[name] = (record.ts, value)
        if record.job_id is not None and record.stage is not None:
            key = (record.job_id, record.stage)
            if record.event == "TokenGranted":
                source.running.add(key)
                self.peak_running = max(self.peak_running, self.stages_running)
            else:
                source.running.discard(key)
        in_use = sum(s.tokens["in_use"] for s in self.by_key.values())
        self.peak_in_use = max(self.peak_in_use, in_use)

    def daemon_event(self, source: Source, record: Record) -> None:
        """A daemon's start, reload or stop, as its state; a start clears its tokens."""
        if record.event == "DaemonStarted":  # whatever ran before died with the old process
            source.running.clear()
            source.tokens["in_use"] = 0
            source.ident = {k: record.data.get(k) for k in ("url", "pid", "max_concurrent")}
            daemon_id = record.data.get("daemon_id")
            source.daemon_id = daemon_id if isinstance(daemon_id, str) else None
            source.lost = None
        scalars = {
            k: v
            for k, v in record.data.items()
            if k not in ENVELOPE and isinstance(v, str | int | float)
        }
        state = DAEMON_STATES.get(record.event, "stopping")
        source.daemon = {"state": state, "since": record.ts, **scalars}

    def taken_over(self, previous_owner: str, by: Source, ts: float) -> None:
        """``by`` took over a job of the daemon named ``previous_owner``: that daemon's lease
        lapsed, so it is dead or cut off, and its calls in flight are not the cluster's now."""
        for source in self.by_key.values():
            if source is by or source.daemon_id != previous_owner or source.newest > ts:
                continue
            if source.lost is None:
                source.lost = {"since": ts, "by": by.daemon_id or by.key}
            source.running.clear()
            source.tokens["in_use"] = 0

    def forget(self, job_id: str, stages: Iterable[str]) -> None:
        """A job ended or moved away: its stages are no longer in flight anywhere."""
        for source in self.by_key.values():
            for stage in stages:
                source.running.discard((job_id, stage))

    @property
    def stages_running(self) -> int:
        return sum(len(s.running) for s in self.by_key.values())

    def daemon(self) -> dict[str, Any] | None:
        """The one daemon's state, or None when there is none (or several: see :meth:`summary`)."""
        if len(self.by_key) != 1:
            return None
        (source,) = self.by_key.values()
        return dict(source.daemon) if source.daemon else None

    def tokens(self, unstarted: dict[str, int] | None = None) -> dict[str, Any]:
        """The one source's tokens, or the whole's: a cluster's K and W once (its daemons
        share them), other daemons' summed; calls in flight summed. ``unstarted``: per
        source, the stages its active jobs have not started; a source's ``waiting`` is
        believed up to that many (the jobs that were waiting may have ended since)."""

        def waiting_of(s: Source) -> int | None:
            w: int | None = s.tokens["waiting"]
            if w is None or unstarted is None:
                return w
            return min(w, unstarted.get(s.key, 0))

        if len(self.by_key) <= 1:
            if not self.by_key:
                return _fresh_tokens()
            (one,) = self.by_key.values()
            return {**one.tokens, "waiting": waiting_of(one)}
        members = [s for s in self.by_key.values() if s.daemon_id is not None]
        alone = [s for s in self.by_key.values() if s.daemon_id is None]
        waiting = [w for s in self.by_key.values() if (w := waiting_of(s)) is not None]
        capacity = sum(s.capacity() for s in alone)
        if members:
            said = self.cluster.get("capacity")
            capacity += said[1] if said else max(s.capacity() for s in members)
        total: dict[str, Any] = {
            "in_use": sum(s.tokens["in_use"] for s in self.by_key.values()),
            "capacity": capacity,
            "peak": self.peak_in_use,
            "waiting": sum(waiting) if waiting else None,
            "cluster": len(members),
        }
        if any("window" in s.tokens for s in self.by_key.values()):
            window = sum(s.tokens.get("window", s.capacity()) for s in alone)
            if members:
                said = self.cluster.get("window") or self.cluster.get("capacity")
                window += said[1] if said else max(s.capacity() for s in members)
            total["window"] = window
        return total

    def names(self) -> dict[str, str]:
        """A short name per source, unique: the first level of :meth:`Source.candidates` at
        which no two sources share one (their address, then with pid, folder, path)."""
        candidates = {key: s.candidates() for key, s in self.by_key.items()}
        for level in range(4):
            names = {key: c[level] for key, c in candidates.items()}
            if len(set(names.values())) == len(names):
                return names
        return {key: key for key in self.by_key}

    def summary(self, now: float, jobs: dict[str, int]) -> list[dict[str, Any]]:
        """One entry per source, in the order they were first seen (empty for a single log)."""
        if len(self.by_key) <= 1:
            return []
        names = self.names()
        out = []
        for key, s in self.by_key.items():
            tokens = {
                "in_use": s.tokens["in_use"],
                "capacity": s.capacity(),
                "peak": s.tokens["peak"],
            }
            if "window" in s.tokens:
                tokens["window"] = s.tokens["window"]
            out.append(
                {
                    "name": names[key],
                    "log": key,
                    "status": s.status(now),
                    "since": s.daemon["since"] if s.daemon else None,
                    "pid": s.ident.get("pid"),
                    "url": s.ident.get("url"),
                    "newest": s.newest or None,
                    "active_jobs": jobs.get(key, 0),
                    "stages_running": len(s.running),
                    "tokens": tokens,
                    "cluster": s.daemon_id is not None,
                }
            )
        return out
