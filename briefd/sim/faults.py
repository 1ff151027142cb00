"""What the simulated chat server (:mod:`briefd.sim.server`) answers, and its bookkeeping.

Kept apart from the HTTP plumbing so the rules that decide *what* a request gets (which
fault applies, how long it waits, the deterministic content) can be read and unit-tested
without sockets, and so that all mutable state tests rely on (exact in-flight counts,
fault budgets) lives behind a single lock in :class:`SimLedger`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    ValidationError,
    model_validator,
)

DEFAULT_LATENCY_S: dict[str, float] = {
    "BRIEFING_MD": 7.0,
    "PLAYS_MD": 7.0,
    "PROCUREMENT_JSON": 5.0,
    "ANNEX_JSON": 6.0,
    # examples/pipelines/renewal-memo.toml, as its expected_ms declare
    "ACCOUNT_MD": 6.0,
    "FACTS_JSON": 4.0,
    "RISKS_MD": 5.0,
    "TIMELINE_JSON": 3.0,
    "MEMO_MD": 6.0,
}


class Fault(BaseModel):
    """One misbehaviour to inject, matched against the stage/job headers of a request.

    Frozen so a fault can be shared between the profile and the server without anyone
    mutating it; the remaining ``times`` budget is tracked by :class:`SimLedger` instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str | None = None
    job_id: str | None = None
    times: int | None = Field(default=1, ge=1)
    status: int | None = Field(default=None, ge=400, le=599)
    retry_after: str | None = None
    delay_s: NonNegativeFloat = 0.0
    invalid_json: bool = False
    truncate: bool = False
    hang: bool = False
    drip_s: float | None = Field(default=None, gt=0.0)
    drop: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        """Reject combinations that cannot both happen, so a typo in a faults file is loud."""
        modes = [
            name
            for name, on in (
                ("status", self.status is not None),
                ("hang", self.hang),
                ("drop", self.drop),
                ("drip_s", self.drip_s is not None),
            )
            if on
        ]
        if len(modes) > 1:
            raise ValueError(f"only one of status, hang, drop, drip_s may be set, got {modes}")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after is only sent with an error status; set status too")
        if (self.invalid_json or self.truncate) and modes and modes != ["drip_s"]:
            raise ValueError("invalid_json/truncate shape a 200 answer; not with status/hang/drop")
        return self

    def matches(self, stage: str, job_id: str) -> bool:
        """True when this fault targets the request's stage and job (None is a wildcard)."""
        return (self.stage is None or self.stage == stage) and (
            self.job_id is None or self.job_id == job_id
        )


class SimProfile(BaseModel):
    """Per-stage latencies and start-up faults; the shape of a ``--faults`` file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_s: dict[str, NonNegativeFloat] = Field(default_factory=lambda: dict(DEFAULT_LATENCY_S))
    default_latency_s: NonNegativeFloat = 1.0
    scale: NonNegativeFloat = 1.0
    faults: list[Fault] = Field(default_factory=list)

    def latency_for(self, stage: str) -> float:
        """Seconds a normal answer for ``stage`` takes, after scaling."""
        return self.latency_s.get(stage, self.default_latency_s) * self.scale


class RequestRecord(BaseModel):
    """One chat-completion request as seen by the server (end/status None while live)."""

    model_config = ConfigDict(frozen=True)

    stage: str
    job_id: str
    start: float
    end: float | None
    status: int | None


class SimStats(BaseModel):
    """Consistent snapshot of the server counters, taken under the ledger lock."""

    model_config = ConfigDict(frozen=True)

    total_requests: int
    in_flight: int
    max_in_flight: int
    by_stage: dict[str, int]
    by_job_stage: dict[str, dict[str, int]]
    completed: int
    last_authorization: str | None
    requests: list[RequestRecord]
    by_status: dict[int, int] = Field(default_factory=dict)  # finished requests per status


@dataclass(slots=True)
class LiveRequest:
    """Mutable twin of :class:`RequestRecord`, owned by the handler that serves it."""

    stage: str
    job_id: str
    start: float
    generation: int
    end: float | None = None
    status: int | None = None


@dataclass(slots=True)
class _Armed:
    fault: Fault
    remaining: int | None


class SimLedger:
    """All mutable simulator state behind one Condition.

    One lock (rather than atomics per counter) is what makes ``max_in_flight`` exact and
    :meth:`snapshot` consistent, which is how tests check a client's concurrency cap.
    """

    def __init__(self, profile: SimProfile) -> None:
        self._cond = threading.Condition()
        self._profile = profile
        self._faults = [_Armed(f, f.times) for f in profile.faults]
        self._in_flight = 0
        self._generation = 0
        self._clear_counters()

    def _clear_counters(self) -> None:
        self._total = 0
        self._max_in_flight = self._in_flight
        self._completed = 0
        self._by_job_stage: dict[str, dict[str, int]] = {}
        self._by_stage: dict[str, int] = {}
        self._last_auth: str | None = None
        self._records: list[LiveRequest] = []

    @property
    def profile(self) -> SimProfile:
        """The current profile (its ``faults`` are the start-up list, not live budgets)."""
        with self._cond:
            return self._profile

    def set_scale(self, scale: float) -> None:
        """Change the latency multiplier; applies to requests that start afterwards."""
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        with self._cond:
            self._profile = self._profile.model_copy(update={"scale": float(scale)})

    def inject(self, fault: Fault) -> None:
        """Arm ``fault`` after the existing ones (faults match in insertion order)."""
        with self._cond:
            self._faults.append(_Armed(fault, fault.times))

    def reset(self) -> None:
        """Drop all faults and counters; ``in_flight`` stays truthful about live requests.

        Requests still in flight are forgotten: their completion is not counted, so the
        stats after a reset describe only requests that start afterwards.
        """
        with self._cond:
            self._faults.clear()
            self._generation += 1
            self._clear_counters()
            self._cond.notify_all()

    def begin(self, stage: str, job_id: str, authorization: str | None) -> LiveRequest:
        """Count a chat request whose body has been received."""
        with self._cond:
            rec = LiveRequest(stage, job_id, time.monotonic(), self._generation)
            self._records.append(rec)
            self._total += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._by_stage[stage] = self._by_stage.get(stage, 0) + 1
            per_job = self._by_job_stage.setdefault(job_id, {})
            per_job[stage] = per_job.get(stage, 0) + 1
            self._last_auth = authorization
            self._cond.notify_all()
            return rec

    def take_fault(self, stage: str, job_id: str) -> Fault | None:
        """Return the first armed fault matching the request, spending one of its uses."""
        with self._cond:
            for armed in self._faults:
                if armed.fault.matches(stage, job_id):
                    if armed.remaining is not None:
                        armed.remaining -= 1
                        if armed.remaining == 0:
                            self._faults.remove(armed)
                    return armed.fault
            return None

    def finish(self, rec: LiveRequest, status: int | None, completed: bool) -> None:
        """Mark ``rec`` done; ``completed`` means a 200 body was written in full."""
        with self._cond:
            self._in_flight -= 1
            rec.end = time.monotonic()
            rec.status = status
            if completed and rec.generation == self._generation:
                self._completed += 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block on the ledger condition until ``predicate`` (called under the lock) holds."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    @property
    def in_flight(self) -> int:
        """Live request count; only read it under :meth:`wait_for` for exactness."""
        return self._in_flight

    def snapshot(self) -> SimStats:
        """Copy every counter under the lock so the caller sees one instant."""
        with self._cond:
            return SimStats(
                total_requests=self._total,
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                by_stage=dict(self._by_stage),
                by_job_stage={job: dict(st) for job, st in self._by_job_stage.items()},
                completed=self._completed,
                last_authorization=self._last_auth,
                requests=[
                    RequestRecord(
                        stage=r.stage, job_id=r.job_id, start=r.start, end=r.end, status=r.status
                    )
                    for r in self._records
                ],
                by_status=dict(Counter(r.status for r in self._records if r.status is not None)),
            )


class ProfileError(Exception):
    """A faults/profile file that cannot be used; the message is one line for the CLI."""


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_profile(path: str | Path) -> SimProfile:
    """Read a faults file: a JSON list of faults, or a full :class:`SimProfile` object.

    Errors become a :class:`ProfileError` naming the file and the offending field, because
    a CLI user editing JSON by hand needs the location, not a traceback.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(data, list):
        data = {"faults": data}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a JSON list of faults or a profile object")
    try:
        return SimProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ProfileError(f"{path}: {_loc(tuple(err['loc']))}: {err['msg']}{more}") from None
