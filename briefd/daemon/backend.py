"""The daemon as the HTTP API sees it: the :class:`~briefd.daemon.http_api.Backend` methods.

Each is a short read of the journal or an ``ask`` of an actor with a timeout.
Kept apart from :mod:`briefd.daemon.main` (the daemon's life: start, signals,
reload, drain), which mixes this in.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from briefd.actors.admission import Admission, RootStats
from briefd.actors.limiter_supervisor import LimiterSupervisor
from briefd.config import PipelineSpec
from briefd.daemon.prometheus import DaemonFigures, MetricsExporter
from briefd.jobs import validate_job
from briefd.llm.routing import Routing
from briefd.messages import JobInfo, JobResult, JobSpec, JobState
from briefd.store import JournalStore
from briefd.store.base import StoreUnavailable

ASK_TIMEOUT_S = 10.0


class DaemonBackend:
    """Answers the API from the daemon's parts (set up by ``Daemon.start``)."""

    pipeline: PipelineSpec
    journal: JournalStore
    root: pykka.ActorRef[Any]
    limiter: LimiterSupervisor
    metrics: pykka.ActorRef[Any]
    _stopping: threading.Event
    _exporter: MetricsExporter

    routing: Routing | None = None

    def validate(self, data: Any) -> JobSpec:
        return validate_job(data, self.pipeline, where="job", routing=self.routing)

    def submit(self, job: JobSpec) -> Admission:
        try:
            admission: Admission = self.root.proxy().submit(job).get(timeout=ASK_TIMEOUT_S)
        except pykka.ActorDeadError:
            return Admission(job.job_id, JobState.QUEUED, False, "stopping", 5)
        except StoreUnavailable:  # not written, so not acknowledged: /healthz says why
            return Admission(job.job_id, JobState.QUEUED, False, "unavailable", 5)
        return admission

    def cancel(self, job_id: str) -> JobState | None:
        try:
            state: JobState | None = self.root.proxy().cancel(job_id).get(timeout=ASK_TIMEOUT_S)
        except pykka.ActorDeadError:  # stopping: the job is as the journal says
            info = self.journal.get(job_id)
            return info.status if info is not None else None
        return state

    def info(self, job_id: str) -> JobInfo | None:
        return self.journal.get(job_id)

    def result(self, job_id: str) -> JobResult | None:
        return self.journal.result(job_id)

    def list_jobs(self, status: JobState | None, limit: int) -> list[JobInfo]:
        return self.journal.list_jobs(status, limit)

    def figures(self) -> DaemonFigures:
        return DaemonFigures(
            jobs=self.journal.counts(),
            root=self.root.proxy().stats().get(timeout=ASK_TIMEOUT_S),
            limiter=self.limiter.proxy().stats().get(timeout=ASK_TIMEOUT_S),
            snap=self.metrics.proxy().snapshot().get(timeout=ASK_TIMEOUT_S),
        )

    def metrics_body(self) -> bytes:
        return self._exporter.render()

    def health(self) -> tuple[str, str]:
        """``("ok", "")``, ``("stopping", why)``, or ``("unhealthy", why)`` while the journal or
        the output files cannot be written (each failing area is probed again on the way)."""
        if self._stopping.is_set():
            return "stopping", "the daemon is stopping"
        problem = self.journal.write_problem()
        if problem is not None:
            return "unhealthy", f"cannot write the {problem}"
        listener = getattr(self, "_listener", None)  # with PostgreSQL: the database's wake-ups
        if listener is not None and (lost := listener.problem()) is not None:
            return "unhealthy", f"the database cannot be reached: {lost}"
        return "ok", ""

    def healthy(self) -> bool:
        return self.health()[0] == "ok"

    def health_details(self) -> dict[str, Any]:
        """What ``/healthz`` adds: the daily budget and the parallel mode. A daemon that holds
        jobs by policy (budget spent, rolled back to sequential) is healthy: these say why."""
        try:
            r: RootStats = self.root.proxy().stats().get(timeout=ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            return {}
        return r.healthz_fields()
