"""The operations view: what ``briefd console`` and ``briefd report`` show, from log records.

:class:`OpsView` takes records one at a time (:meth:`OpsView.apply`) and keeps
running state, so a console reads a long log once and then only the lines that
arrive; :meth:`OpsView.snapshot` freezes the figures for rendering or JSON. It
never parses records into message models: plain dict look-ups keep 100,000
lines cheap, and events it does not know (or that a newer briefd adds) are
skipped.

Rates and latencies cover a window of log time (the last ``window_s`` seconds
before the newest record) so that a live console's rollback signals say what is
happening now; ``window_s=None`` covers the whole log, as ``report`` does. The
signals themselves are :mod:`briefd.ops.rollback`'s.

Records can come from several logs (:meth:`OpsView.apply`'s ``source``: a
cluster's daemons, merged in time order). Every record counts in the rates;
who runs each job, one row per job, is :mod:`briefd.ops.jobrows`'s, and the
per-daemon figures (tokens, stages in flight, life) :mod:`briefd.ops.daemons`'s.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from statistics import fmean
from typing import Any

from briefd.actors.metrics import LatencySummary
from briefd.ops.by_pipeline import PipelineTally
from briefd.ops.daemons import Source, Sources
from briefd.ops.eventlog import Record
from briefd.ops.jobrows import JobRows
from briefd.ops.rollback import QUALITY_CODES, Signal, Thresholds, signals
from briefd.ops.snapshot import ErrorRow, JobRow, Snapshot

_OK, _FAILED, _QUALITY = 0, 1, 2


class _Series:
    """``(ts, value)`` observations; with a window, those older than it are dropped."""

    def __init__(self, window_s: float | None) -> None:
        self._window = window_s
        self._items: deque[tuple[float, Any]] = deque()

    def add(self, ts: float, value: Any = 1) -> None:
        self._items.append((ts, value))

    def values(self, newest: float) -> list[Any]:
        if self._window is not None:
            cut = newest - self._window
            while self._items and self._items[0][0] < cut:
                self._items.popleft()
        return [v for _, v in self._items]


def _summaries(series: dict[str, _Series], newest: float) -> dict[str, LatencySummary]:
    return {k: LatencySummary.of(s.values(newest)) for k, s in sorted(series.items())}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


class OpsView:
    """Running aggregates over event-log records (see the module docstring)."""

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        *,
        window_s: float | None = None,
        recent_errors: int = 8,
        recent_jobs: int = 8,
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self.window_s = window_s
        self.newest = 0.0
        self._sources = Sources()
        self._src = Source("")  # the source of the record being applied
        self._rows = JobRows(self._sources, recent_jobs)
        self._totals: Counter[str] = Counter()
        self._errors: deque[ErrorRow] = deque(maxlen=recent_errors)
        self._cooldowns = 0
        # Per endpoint: documents served, failovers away from it, its breaker's last state.
        self._endpoints: dict[str, dict[str, Any]] = {}
        self._cooldown_until = 0.0
        self._attempts, self._timeouts, self._outcomes = (_Series(window_s) for _ in range(3))
        self._stage_ms: dict[str, _Series] = {}  # call time (JobMetrics.stages_ms)
        self._stage_ttft: dict[str, _Series] = {}
        self._stage_queued: dict[str, _Series] = {}
        self._groups = {k: _Series(window_s) for k in ("parallel", "sequential", "total")}
        self._modes = _Series(window_s)  # (parallel, speedup) per job
        self._spend_minute = _Series(60.0)  # USD per job that ended in the last minute
        self._spend: dict[str, Any] = {"total_usd": 0.0, "by_model": {}, "by_stage": {}}
        self._guard: dict[str, Any] = {}
        self._by_pipeline = PipelineTally(window_s)
        self._handlers: dict[str, Callable[[Record], None]] = {
            "JobAccepted": self._accepted,
            "JobStarted": self._started,
            "StageStarted": self._stage_started,
            "StageRetrying": self._stage_retrying,
            "StageSucceeded": self._stage_succeeded,
            "StageFailed": self._stage_failed,
            "StageFellBack": self._stage_fell_back,
            "ProgressChanged": self._progress,
            "TokenGranted": self._token,
            "TokenReleased": self._token,
            "RateLimitCooldown": self._cooldown,
            "StageFailedOver": self._failed_over,
            "EndpointCircuitChanged": self._circuit,
            "JobCompleted": self._completed,
            "JobCancelled": self._cancelled,
            "JobRestarted": self._restarted,
            "JobClaimed": self._claimed,
            "DaemonStarted": self._daemon_event,
            "DaemonReloading": self._daemon_event,
            "DaemonStopping": self._daemon_event,
            "DailyBudgetSpent": self._budget_event,
            "DailyBudgetReleased": self._budget_event,
            "RollbackTripped": self._mode_event,
            "RollbackProbation": self._mode_event,
            "RollbackCleared": self._mode_event,
            "log": self._log,
        }

    def add_source(self, source: str) -> None:
        """Know a log before its first record, so that it is shown (waiting) with the others."""
        self._sources.get(source)

    def apply(self, record: Record, source: str = "") -> None:
        """Take one record of the log ``source``; unknown events are ignored, malformed ones
        counted and skipped."""
        handler = self._handlers.get(record.event)
        self._src = self._sources.get(source)
        self._src.newest = max(self._src.newest, record.ts)
        if handler is not None:
            self.newest = max(self.newest, record.ts)
            try:
                handler(record)
            except (TypeError, ValueError, AttributeError, KeyError):
                self._totals["malformed_records"] += 1

    def apply_all(self, records: Iterable[Record], source: str = "") -> None:
        """Take records of one log in log order."""
        for record in records:
            self.apply(record, source)

    def apply_merged(self, records: Iterable[tuple[str, Record]]) -> None:
        """Take ``(source, record)`` pairs of several logs, merged in time order."""
        for source, record in records:
            self.apply(record, source)

    # -- jobs and stages ----------------------------------------------------------

    def _job(self, record: Record, *, any_source: bool = False) -> JobRow | None:
        return self._rows.row(record, self._src.key, any_source=any_source)

    def _set_stage(self, record: Record, state: str) -> None:
        job = self._job(record)
        if job is not None and record.stage is not None:
            job.stages[record.stage] = state

    def _accepted(self, record: Record) -> None:
        self._job(record)

    def _started(self, record: Record) -> None:
        job = self._job(record)
        if job is None:
            return
        job.state, job.since = "running", record.ts
        job.parallel = record.data.get("parallel") is not False
        stages = record.data.get("stages")
        if isinstance(stages, list):
            job.stages = {str(s): job.stages.get(str(s), "pending") for s in stages}

    def _stage_started(self, record: Record) -> None:
        self._attempts.add(record.ts)
        self._totals["stage_attempts"] += 1
        self._set_stage(record, "running")

    def _error(self, record: Record, key: str, *, final: bool) -> str:
        err = record.data.get(key)
        err = err if isinstance(err, dict) else {}
        code = _str(err.get("code"))
        if code == "TIMEOUT":
            self._timeouts.add(record.ts)
            self._totals["timeouts"] += 1
        self._totals[f"errors_{code or 'unknown'}"] += 1
        self._errors.append(
            ErrorRow(
                record.ts,
                record.job_id or "-",
                record.stage or _str(err.get("stage")),
                code,
                _str(err.get("message")),
                _str(err.get("hint")),
                final,
            )
        )
        return code

    def _stage_retrying(self, record: Record) -> None:
        self._totals["retries"] += 1
        self._error(record, "reason", final=False)
        self._set_stage(record, "retrying")

    def _endpoint(self, name: str) -> dict[str, Any]:
        return self._endpoints.setdefault(
            name, {"served": 0, "failed_over": 0, "skipped": 0, "state": "closed", "retry_at": None}
        )

    def _failed_over(self, record: Record) -> None:
        self._totals["failovers"] += 1
        left = _str(record.data.get("from_route")).partition(":")[0]
        entry = self._endpoint(left)
        entry["skipped" if record.data.get("skipped") else "failed_over"] += 1
        self._endpoint(_str(record.data.get("to_route")).partition(":")[0])

    def _circuit(self, record: Record) -> None:
        entry = self._endpoint(_str(record.data.get("endpoint")))
        entry["state"] = _str(record.data.get("state")) or "closed"
        entry["retry_at"] = record.data.get("retry_at")

    def _stage_succeeded(self, record: Record) -> None:
        served = _str(record.data.get("served_by"))
        if served:
            self._endpoint(served.partition(":")[0])["served"] += 1
        self._outcomes.add(record.ts, _OK)
        self._totals["stages_succeeded"] += 1
        self._set_stage(record, "complete")

    def _stage_failed(self, record: Record) -> None:
        code = self._error(record, "error", final=True)
        self._set_stage(record, "failed")
        if code == "BUDGET_EXCEEDED":  # policy, not the server's health: no rollback signal
            self._totals["budget_refusals"] += 1
        if code == "DEADLINE_EXCEEDED":  # the job's own deadline: policy too
            self._totals["deadline_refusals"] += 1
        if code in ("CANCELLED", "BUDGET_EXCEEDED", "DEADLINE_EXCEEDED"):
            return
        self._totals["stages_failed"] += 1
        quality = code in QUALITY_CODES
        self._totals["quality_failures"] += quality
        self._outcomes.add(record.ts, _QUALITY if quality else _FAILED)

    def _stage_fell_back(self, record: Record) -> None:
        self._totals["fallbacks"] += 1
        self._set_stage(record, "fellback")

    def _merge_progress(self, job: JobRow, progress: Any) -> None:
        if not isinstance(progress, dict):
            return
        if isinstance(progress.get("percent"), int | float):
            job.percent = float(progress["percent"])
        for stage, state in (progress.get("stages") or {}).items():
            mine = job.stages.get(stage)
            # The log's finer states: waiting to retry is still "running", a fallback "failed".
            if (mine, state) not in (("retrying", "running"), ("fellback", "failed")):
                job.stages[stage] = _str(state)

    def _progress(self, record: Record) -> None:
        job = self._job(record)
        if job is not None:
            self._merge_progress(job, record.data.get("progress"))

    def _completed(self, record: Record) -> None:
        job = self._job(record)
        result = record.data.get("result")
        if job is None or not isinstance(result, dict):
            return
        status = _str(result.get("status")) or "unknown"
        self._merge_progress(job, result.get("progress"))
        metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
        assert isinstance(metrics, dict)
        job.total_ms = _int(metrics.get("total_ms"))
        self._add_spend(record.ts, job, result)
        self._by_pipeline.add(record.ts, result)
        if status != "cancelled" and _int(metrics.get("total_ms")) > 0:  # 0: never ran
            self._latency(record.ts, job, metrics)
        self._rows.finish(job, status, record.ts)

    def _latency(self, ts: float, job: JobRow, metrics: dict[str, Any]) -> None:
        attempts = metrics.get("attempts") or {}
        for key, series in (
            ("stages_ms", self._stage_ms),
            ("ttft_ms", self._stage_ttft),
            ("queued_ms", self._stage_queued),
        ):
            for stage, ms in (metrics.get(key) or {}).items():
                if _int(attempts.get(stage)) > 0:
                    series.setdefault(stage, _Series(self.window_s)).add(ts, _int(ms))
        for key in ("parallel", "sequential", "total"):
            name = "total_ms" if key == "total" else f"{key}_group_ms"
            self._groups[key].add(ts, _int(metrics.get(name)))
        speedup = metrics.get("speedup_ratio")
        speedup = float(speedup) if isinstance(speedup, int | float) else 0.0
        self._modes.add(ts, (job.parallel, speedup))

    def _add_spend(self, ts: float, job: JobRow, result: dict[str, Any]) -> None:
        total = result.get("total_cost_usd")
        if not isinstance(total, int | float) or isinstance(total, bool):
            return  # a result from before the cost ledger
        job.cost_usd = float(total)
        self._spend["total_usd"] = round(self._spend["total_usd"] + total, 6)
        self._spend_minute.add(ts, float(total))
        model = _str(result.get("model")) or "(unnamed)"
        by_model = self._spend["by_model"]
        by_model[model] = round(by_model.get(model, 0.0) + total, 6)
        by_stage = self._spend["by_stage"]
        for stage, usd in (result.get("cost_usd") or {}).items():
            if isinstance(usd, int | float):
                by_stage[stage] = round(by_stage.get(stage, 0.0) + usd, 6)

    def _cancelled(self, record: Record) -> None:
        job = self._job(record, any_source=True)  # any daemon's API may cancel it
        if job is None:
            return
        if job.state == "queued" or record.data.get("was") == "queued":
            self._rows.finish(job, "cancelled", record.ts)
        else:
            job.state = "cancelling"  # its JobCompleted follows

    def _claimed(self, record: Record) -> None:
        """A daemon of a cluster claimed the job: the row is now its (the run follows)."""
        if self._job(record) is not None and record.data.get("taken_over") is True:
            self._totals["job_takeovers"] += 1
        previous = record.data.get("previous_owner")
        if record.data.get("taken_over") is True and isinstance(previous, str):
            self._sources.taken_over(previous, self._src, record.ts)

    def _restarted(self, record: Record) -> None:
        job = self._job(record)
        if job is not None:
            self._totals["job_restarts"] += 1
            job.state = "restarting"  # its JobStarted follows

    # -- tokens, daemon, plain log lines ---------------------------------------------

    def _token(self, record: Record) -> None:
        self._sources.token(self._src, record)

    def _cooldown(self, record: Record) -> None:
        self._cooldowns += 1
        until = record.data.get("until")
        if isinstance(until, int | float):
            self._cooldown_until = max(self._cooldown_until, float(until))

    def _daemon_event(self, record: Record) -> None:
        if record.event == "DaemonStarted":  # whatever it ran before died with the old process
            for job in self._rows.owned_by(self._src.key):
                self._rows.finish(job, "interrupted", record.ts)
        self._sources.daemon_event(self._src, record)

    def _budget_event(self, record: Record) -> None:
        d = record.data
        self._guard["budget"] = {
            "held": record.event == "DailyBudgetSpent",
            "since": record.ts,
            "spent_usd": d.get("spent_usd"),
            "budget_usd": d.get("budget_usd"),
            "reason": _str(d.get("reason")),
        }

    def _mode_event(self, record: Record) -> None:
        mode = {"RollbackTripped": "sequential", "RollbackProbation": "probation"}
        self._guard["mode"] = {
            "mode": mode.get(record.event, "parallel"),
            "since": record.ts,
            "reason": _str(record.data.get("reason")),
        }

    def _log(self, record: Record) -> None:
        if record.level in ("ERROR", "CRITICAL"):
            self._totals["log_errors"] += 1
            where = (record.job_id or "-", record.stage or "-")
            message = _str(record.data.get("msg"))
            self._errors.append(ErrorRow(record.ts, *where, "LOG", message, "", True))

    # -- the snapshot -------------------------------------------------------------------

    def _signals(self) -> list[Signal]:
        newest = self.newest
        outcomes = self._outcomes.values(newest)
        return signals(
            self.thresholds,
            failed=sum(1 for o in outcomes if o != _OK),
            quality=sum(1 for o in outcomes if o == _QUALITY),
            finished=len(outcomes),
            timeouts=len(self._timeouts.values(newest)),
            attempts=len(self._attempts.values(newest)),
        )

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The figures now (``now`` is wall time for cool-downs; default: the newest record)."""
        newest = self.newest
        now = newest if now is None else now
        modes = self._modes.values(newest)
        speedups = [s for parallel, s in modes if parallel]
        rows = self._rows
        active = sorted(rows.active.values(), key=lambda j: (j.state != "running", j.since))
        sources = self._sources
        names = sources.names() if len(sources) > 1 else {}
        owned = Counter(j.owner or "" for j in active)
        unstarted: Counter[str] = Counter()  # stages that may still be waiting for a token
        for j in active:
            unstarted[j.owner or ""] += sum(1 for st in j.stages.values() if st == "pending")
            unstarted[j.owner or ""] += sum(1 for st in j.stages.values() if st == "retrying")
        return Snapshot(
            as_of=now,
            daemon=sources.daemon(),
            jobs_by_status=dict(rows.status),
            active=[j.copy(names) for j in active],
            recent=[j.copy(names) for j in reversed(rows.finished)],
            queued=sum(1 for j in active if j.state == "queued"),
            stages_running=sources.stages_running,
            peak_stages_running=sources.peak_running,
            tokens={
                **sources.tokens(dict(unstarted)),
                "cooldowns": self._cooldowns,
                "cooling_down_s": round(max(0.0, self._cooldown_until - now), 3),
            },
            latency_jobs=len(modes),
            stage_latency=_summaries(self._stage_ms, newest),
            stage_ttft=_summaries(self._stage_ttft, newest),
            stage_queued=_summaries(self._stage_queued, newest),
            parallel_group=LatencySummary.of(self._groups["parallel"].values(newest)),
            sequential_group=LatencySummary.of(self._groups["sequential"].values(newest)),
            total=LatencySummary.of(self._groups["total"].values(newest)),
            mean_speedup=round(fmean(speedups), 3) if speedups else 0.0,
            totals=dict(self._totals),
            signals=self._signals(),
            errors=list(reversed(self._errors)),
            window_s=self.window_s,
            endpoints={k: dict(v) for k, v in sorted(self._endpoints.items())},
            spend={
                **self._spend,
                "by_model": dict(self._spend["by_model"]),
                "by_stage": dict(self._spend["by_stage"]),
                "last_minute_usd": round(sum(self._spend_minute.values(newest)), 6),
            },
            guard={k: dict(v) for k, v in self._guard.items()},
            sources=sources.summary(now, dict(owned)),
            pipelines=self._by_pipeline.summary(newest),
        )
