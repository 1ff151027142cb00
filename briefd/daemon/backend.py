"""The daemon as the HTTP API sees it: the :class:`~briefd.daemon.http_api.Backend` methods.

Each is a short read of the journal or an ``ask`` of an actor with a timeout.
Kept apart from :mod:`briefd.daemon.main` (the daemon's life: start, signals,
reload, drain), which mixes this in.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pykka

from briefd.actors.admission import Admission, RootStats
from briefd.actors.limiter_supervisor import LimiterSupervisor
from briefd.cluster.state import ClusterLimiterState
from briefd.config import PipelineSpec, Settings
from briefd.daemon.prometheus import DaemonFigures, MetricsExporter
from briefd.jobs import validate_job
from briefd.llm.routing import Routing
from briefd.messages import JobInfo, JobResult, JobSpec, JobState
from briefd.pipelines.registry import PipelineRegistry
from briefd.store import JournalStore
from briefd.store.base import ClaimStore, StoreUnavailable
from briefd.webhooks.service import Webhooks

ASK_TIMEOUT_S = 10.0
SUBMIT_WITHIN_S = 5.0
"""A submission is stored within this, or refused unstored (the ask waits up to
:data:`ASK_TIMEOUT_S`: the margin covers a write cut off by TCP, bounded by the database
timeouts)."""
DETAILS_ASK_S = 0.05
"""``/healthz`` asks the root this long at most for its details."""


class DaemonBackend:
    """Answers the API from the daemon's parts (set up by ``Daemon.start``)."""

    pipeline: PipelineSpec
    registry: PipelineRegistry
    journal: JournalStore
    root: pykka.ActorRef[Any]
    limiter: LimiterSupervisor
    metrics: pykka.ActorRef[Any]
    _stopping: threading.Event
    _exporter: MetricsExporter
    settings: Settings
    daemon_id: str | None
    _root_stats: RootStats | None = None
    _stats_asked: pykka.Future[RootStats] | None = None
    _details_lock = threading.Lock()

    routing: Routing | None = None
    webhooks: Webhooks | None = None

    def validate(self, data: Any) -> JobSpec:
        """The job, checked against the pipeline it names (ConfigError naming the field)."""
        pipeline = self.registry.for_job(data)
        job = validate_job(data, pipeline, where="job", routing=self.routing)
        if self.webhooks is not None:  # its URL resolved and checked, its events known
            self.webhooks.check_job(job)
        return job

    def pipelines(self) -> list[dict[str, Any]]:
        """``GET /v1/pipelines``: every pipeline jobs may name, with its stages."""
        return self.registry.describe()

    def submit(self, job: JobSpec) -> Admission:
        """Stored and acknowledged, or refused and never stored.

        The root gets a deadline (:data:`SUBMIT_WITHIN_S`) well inside the ask's timeout:
        a submission it reaches later (it waited behind a database call) is refused
        unwritten, and its write must end by then; so a ``pykka.Timeout`` here means
        nothing was, or will be, stored, and the answer says the database is not answering.
        """
        deadline = time.monotonic() + SUBMIT_WITHIN_S
        try:
            admission: Admission = (
                self.root.proxy().submit(job, deadline).get(timeout=ASK_TIMEOUT_S)
            )
        except pykka.ActorDeadError:
            return Admission(job.job_id, JobState.QUEUED, False, "stopping", 5)
        except (StoreUnavailable, pykka.Timeout):  # not written, so not acknowledged
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
        info = self.journal.get(job_id)
        if info is not None and self.webhooks is not None and self.webhooks.enabled:
            info = info.model_copy(update={"webhooks": self.webhooks.deliveries(job_id)})
        return info

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
            webhooks=self.webhooks.figures() if self.webhooks is not None else None,
        )

    def metrics_body(self) -> bytes:
        return self._exporter.render()

    def health(self) -> tuple[str, str]:
        """``("ok", "")``, ``("stopping", why)``, or ``("unhealthy", why)`` while the journal or
        the output files cannot be written, or (a cluster) the database cannot be reached or
        this daemon cannot prove its claims. From what the daemon already knows: no database
        round trip and no actor asked, so it answers at once even when they are blocked."""
        if self._stopping.is_set():
            return "stopping", "the daemon is stopping"
        problem = self.journal.write_problem()
        if problem is not None:
            return "unhealthy", f"cannot write the {problem}"
        if self.daemon_id is None:
            return "ok", ""
        listener = getattr(self, "_listener", None)  # with PostgreSQL: the database's wake-ups
        if listener is not None and (lost := listener.problem()) is not None:
            return "unhealthy", f"the database cannot be reached: {lost}"
        state = self.limiter.state
        if isinstance(state, ClusterLimiterState) and (why := state.health(self.settings.lease_s)):
            return "unhealthy", why
        claims = cast(ClaimStore, self.journal).claims_problem()
        if claims is not None:
            return "unhealthy", claims
        return "ok", ""

    def healthy(self) -> bool:
        return self.health()[0] == "ok"

    def health_details(self) -> dict[str, Any]:
        """What ``/healthz`` adds: the daily budget and the parallel mode. A daemon that holds
        jobs by policy (budget spent, rolled back to sequential) is healthy: these say why.
        The root is asked once at a time and waited for :data:`DETAILS_ASK_S` at most; while
        it is busy its last answer is used (and no second question piles up in its inbox)."""
        with self._details_lock:
            try:
                if self._stats_asked is None:
                    self._stats_asked = self.root.proxy().stats()
                self._root_stats = self._stats_asked.get(timeout=DETAILS_ASK_S)
                self._stats_asked = None
            except pykka.Timeout:
                pass
            except pykka.ActorDeadError:
                self._stats_asked = None
            cached = self._root_stats
        return cached.healthz_fields() if cached is not None else {}
