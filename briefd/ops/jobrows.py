"""The operations view's job rows: who runs each job, and one row per job in a cluster.

Kept apart from :mod:`briefd.ops.view` (the figures) because the rules for
rows are the part that several logs change. With one log a row is made by a
job's first record and ends with its last, as it always did. With several (a
cluster) a job can move: its *owner* is the log of its last ``JobClaimed``,
``JobStarted`` or ``JobRestarted``, what another log says of it afterwards (a daemon that lost
it, still talking) does not move the row, and a row that ended (its daemon
restarted, or the loser's stale end) comes back when a daemon takes the job,
so a job is one row to the end, never two.
"""

from __future__ import annotations

from collections import Counter, deque

from briefd.ops.daemons import Sources
from briefd.ops.eventlog import Record
from briefd.ops.snapshot import JobRow

TAKEOVER = frozenset({"JobClaimed", "JobStarted", "JobRestarted"})
"""Events by which a daemon takes a job: its row then follows that daemon's log."""


class JobRows:
    """Jobs running or queued by id, the last ones that ended, and the count of each end."""

    def __init__(self, sources: Sources, recent: int) -> None:
        self.sources = sources
        self.active: dict[str, JobRow] = {}
        self.finished: deque[JobRow] = deque(maxlen=recent)
        self.status: Counter[str] = Counter()

    def row(self, record: Record, source: str, *, any_source: bool = False) -> JobRow | None:
        """The record's job row, made if new; None when ``source`` no longer owns the job
        (unless ``any_source``: a fact about the job whoever says it, like a cancel)."""
        if record.job_id is None:
            return None
        job = self.active.get(record.job_id)
        if job is None:
            job = self._revive(record, source) if len(self.sources) > 1 else None
            if job is None:
                job = JobRow(record.job_id, record.ts, owner=source)
                self.active[record.job_id] = job
        elif job.owner != source and not any_source:
            if record.event not in TAKEOVER:
                return None  # said by a daemon that no longer runs the job
            self.sources.forget(job.job_id, job.stages)
            job.owner = source
        return job

    def _revive(self, record: Record, source: str) -> JobRow | None:
        """A row that ended, back to active when a daemon takes its job (or its owner goes on)."""
        job = next((j for j in self.finished if j.job_id == record.job_id), None)
        if job is None or (job.owner != source and record.event not in TAKEOVER):
            return None
        self.finished.remove(job)
        if job.state != "interrupted":
            self.status[job.state] -= 1
            if not self.status[job.state]:
                del self.status[job.state]
        job.owner, job.ended, job.total_ms = source, None, None
        job.state = "queued" if record.event == "JobAccepted" else "running"
        self.active[job.job_id] = job
        return job

    def finish(self, job: JobRow, state: str, ts: float) -> None:
        """The job ended as ``state`` (``interrupted``: its daemon died, not a status)."""
        job.state, job.ended = state, ts
        if state != "interrupted":
            self.status[state] += 1
        self.sources.forget(job.job_id, job.stages)
        self.active.pop(job.job_id, None)
        self.finished.append(job)

    def owned_by(self, source: str) -> list[JobRow]:
        """The active jobs ``source`` runs."""
        return [j for j in self.active.values() if j.owner == source]
