"""Faults inside the actor system: every job still ends in exactly one terminal state.

Stages that raise where nobody catches, actors whose ``on_start`` raises, a ``SystemExit``
in a stage of the daemon, a rate limiter that dies with calls in flight, and asks that
could wait forever. Jobs run in-process through :class:`briefd.Pipeline` (or ``briefd
serve`` as a subprocess) against the simulator on loopback; waits are futures, queues and
events with timeouts, never sleeps.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

import pykka
import pytest
from actor_helpers import Inbox
from daemon_helpers import STAGES, Daemon, complete_stages, make_job, wait_for

import briefd
from briefd.actors import CoordinatorActor, RateLimiterActor, StageActor
from briefd.daemon.main import EXIT_FATAL
from briefd.messages import (
    ErrorCode,
    Event,
    JobStatus,
    ReportRateLimit,
    RequestToken,
    TokenGranted,
)
from briefd.sim.server import Fault, SimProfile, SimServer

# -- statuses that mean what they say ----------------------------------------------------


def test_a_job_whose_every_call_failed_is_failed_even_with_a_fallback(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Every model call fails; procurement falls back to the job's own metrics. The fallback
    is kept, but the job is ``failed`` (exit 1), not ``partial``: nothing was the model's."""
    sim.inject(Fault(status=400, times=None))
    metrics = {"summary": "from the CRM", "vendors": []}
    result = briefd.run(make_job(procurement_metrics=metrics), make_settings())
    assert result.status is JobStatus.FAILED
    assert result.fallbacks == ["PROCUREMENT_JSON"]
    assert result.documents["PROCUREMENT_JSON"] == metrics
    assert {e.stage for e in result.errors} == set(STAGES)


def test_one_call_that_succeeded_makes_the_job_partial(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """BRIEFING_MD alone succeeds, procurement falls back: ``partial`` (one document is real)."""
    for stage in STAGES[1:]:
        sim.inject(Fault(stage=stage, status=400, times=None))
    result = briefd.run(make_job(), make_settings())
    assert result.status is JobStatus.PARTIAL
    assert result.documents["BRIEFING_MD"] and result.fallbacks == ["PROCUREMENT_JSON"]


# -- stages that raise where the stage does not catch -------------------------------------


class _RaisesOnItsToken(StageActor):
    """PLAYS_MD's handler raises when its token comes, outside the stage's own try."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TokenGranted) and self.spec.name == "PLAYS_MD":
            raise RuntimeError("a bug in the tell path")
        return super().on_receive(message)


def test_a_stage_raising_in_its_tell_path_is_crashed_and_alone(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """pykka's on_failure path: PLAYS_MD ends CRASHED, every other stage succeeds, and the
    token it was granted goes back at once (released, not reaped later)."""
    with briefd.Pipeline(make_settings(), stage_actor_cls=_RaisesOnItsToken) as pipeline:
        result = pipeline.submit(make_job()).get(timeout=30)
        stats = pipeline.limiter_stats()
    assert result.status is JobStatus.PARTIAL
    assert [(e.stage, e.code) for e in result.errors] == [("PLAYS_MD", ErrorCode.CRASHED)]
    assert all(result.documents[s] for s in STAGES if s != "PLAYS_MD")
    assert sim.stats().by_job_stage["acme-1"].get("PLAYS_MD", 0) == 0
    assert (stats.in_use, stats.reclaimed_total) == (0, 0), stats


class _DiesOnStart(StageActor):
    """ANNEX_JSON's actor dies in on_start, before its turn comes."""

    def on_start(self) -> None:
        if self.spec.name == "ANNEX_JSON":
            raise RuntimeError("cannot start")
        super().on_start()


class _CannotBeMade(StageActor):
    """PLAYS_MD's actor cannot even be constructed (in the coordinator's on_start)."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs["spec"].name == "PLAYS_MD":
            raise RuntimeError("cannot construct")
        super().__init__(**kwargs)


@pytest.mark.parametrize(
    ("stage_cls", "stage"), [(_DiesOnStart, "ANNEX_JSON"), (_CannotBeMade, "PLAYS_MD")]
)
def test_a_stage_that_fails_to_start_fails_alone(
    sim: SimServer, make_settings: Any, make_job: Any, stage_cls: type[StageActor], stage: str
) -> None:
    """A stage actor dead before its turn, or never made, is that stage's CRASHED error;
    the coordinator neither dies (a hung job) nor fails the whole job."""
    events: list[Event] = []
    with briefd.Pipeline(make_settings(), stage_actor_cls=stage_cls) as pipeline:
        result = pipeline.submit(make_job(), observers=[events.append]).get(timeout=30)
    assert result.status is JobStatus.PARTIAL
    assert [(e.stage, e.code) for e in result.errors] == [(stage, ErrorCode.CRASHED)]
    assert all(result.documents[s] for s in STAGES if s != stage)
    assert [e.type for e in events].count("JobCompleted") == 1


def test_a_coordinator_whose_on_start_raises_still_ends_its_job(
    sim: SimServer, make_settings: Any, make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator of ``doomed`` dies in on_start (pykka calls neither on_failure nor
    on_stop): the pipeline's watch ends the job ``failed``, once; the next job runs."""
    real_on_start = CoordinatorActor.on_start

    def on_start(self: CoordinatorActor) -> None:
        if self.job.job_id == "doomed":
            raise RuntimeError("on_start bug")
        real_on_start(self)

    monkeypatch.setattr(CoordinatorActor, "on_start", on_start)
    events: list[Event] = []
    with briefd.Pipeline(make_settings()) as pipeline:
        doomed = pipeline.submit(make_job("doomed"), observers=[events.append])
        result = doomed.get(timeout=10)
        fine = pipeline.submit(make_job("fine")).get(timeout=30)
        snap = pipeline.metrics()
    assert result.status is JobStatus.FAILED
    assert [(e.stage, e.code) for e in result.errors] == [("*", ErrorCode.CRASHED)]
    assert [e.type for e in events] == ["JobCompleted"]
    assert doomed.get(timeout=1) == result
    assert fine.status is JobStatus.SUCCEEDED
    assert snap.jobs_by_status == {"failed": 1, "succeeded": 1}
    assert "doomed" not in sim.stats().by_job_stage


# -- the rate limiter --------------------------------------------------------------------


class _BuggyLimiter(RateLimiterActor):
    """A limiter with a bug in one handler."""

    def _cool_down(self, msg: ReportRateLimit) -> None:
        raise RuntimeError("a bug in the cool-down")


def test_a_bad_message_does_not_kill_the_limiter() -> None:
    """A handler that raises drops its message; the limiter lives and grants."""
    got: queue.Queue[Any] = queue.Queue()
    limiter = _BuggyLimiter.start(capacity=1)
    requester = Inbox.start(got)
    limiter.tell(ReportRateLimit(job_id="j", stage="A", retry_after_s=0.1))
    limiter.tell(RequestToken(job_id="j", stage="A", requester=requester.actor_urn))
    assert isinstance(got.get(timeout=5), TokenGranted)
    assert limiter.is_alive()


def test_a_dead_limiter_is_restarted_and_the_cap_still_holds(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """The limiter dies while 2 calls are in flight (held by slow answers) and other stages
    wait: a successor takes over, every job completes, and the server never sees more than 2
    calls at once (a successor that started with fresh tokens would let 4 through)."""
    for job in ("j0", "j1"):
        sim.inject(Fault(job_id=job, stage="BRIEFING_MD", delay_s=0.6))
        sim.inject(Fault(job_id=job, stage="PLAYS_MD", delay_s=0.6))
    with briefd.Pipeline(make_settings(max_concurrent=2)) as pipeline:
        futures = [pipeline.submit(make_job(f"j{i}")) for i in range(4)]
        assert sim.wait_for_in_flight(2, timeout=10)
        # Every other root stage has asked (coordinators start in their own threads).
        assert wait_for(lambda: pipeline.limiter_stats().waiting == 6, 5)
        assert pipeline.limiter_stats().in_use == 2
        [old] = pykka.ActorRegistry.get_by_class(RateLimiterActor)
        old.stop(block=True, timeout=5)
        results = [f.get(timeout=30) for f in futures]
        after = pipeline.limiter_stats()
        [new] = pykka.ActorRegistry.get_by_class(RateLimiterActor)
    assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 4
    stats = sim.stats()
    assert stats.max_in_flight == 2
    assert stats.total_requests == 16
    assert new.actor_urn != old.actor_urn
    assert (after.restarts, after.in_use, after.waiting) == (1, 0, 0), after


# -- asks that could wait forever --------------------------------------------------------


def test_an_ask_cycle_through_the_public_api_times_out(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """An observer runs in the publishing actor's thread: one that asks the limiter for its
    stats while the limiter publishes a grant asks the limiter from inside itself. The ask
    times out (pykka.Timeout) instead of hanging the limiter and every job with it."""
    seen: list[tuple[str, float]] = []

    def asks_back(event: Event) -> None:
        if isinstance(event, TokenGranted) and not seen:
            t0 = time.monotonic()
            try:
                pipeline.limiter_stats(timeout_s=0.3)
                seen.append(("answered", time.monotonic() - t0))
            except pykka.Timeout:
                seen.append(("Timeout", time.monotonic() - t0))

    with briefd.Pipeline(make_settings(), observers=[asks_back]) as pipeline:
        result = pipeline.submit(make_job("cycle")).get(timeout=30)
    assert result.status is JobStatus.SUCCEEDED
    assert [kind for kind, _ in seen] == ["Timeout"]
    assert 0.25 <= seen[0][1] < 5.0, seen


def _unbounded_gets(root: Path) -> list[str]:
    """``….get()`` with no timeout on what is a future: a call's result or a ``future``."""
    found = []
    paths = [Path(d, f) for d, _, fs in os.walk(root, followlinks=True) for f in fs]
    for path in sorted(p for p in paths if p.suffix == ".py"):  # actors/ etc. are links
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "ask")
            ):
                continue
            kw = {k.arg for k in node.keywords}
            receiver = node.func.value
            is_future = isinstance(receiver, ast.Call) or (
                isinstance(receiver, ast.Name) and "future" in receiver.id
            )
            if node.func.attr == "get" and is_future and not node.args and "timeout" not in kw:
                found.append(f"{path}:{node.lineno}")
            if node.func.attr == "ask" and not ({"timeout", "block"} & kw):
                found.append(f"{path}:{node.lineno}")
    return found


def test_every_future_get_in_briefd_has_a_timeout(tmp_path: Path) -> None:
    """The rule behind the test above, checked on the source: no ``future.get()`` or
    ``proxy().x().get()`` without a timeout, no blocking ``ask`` without one."""
    package = Path(briefd.__file__).resolve().parent
    assert _unbounded_gets(package) == []
    planted = tmp_path / "bad.py"
    planted.write_text("x = ref.proxy().stats().get()\ny = future.get()\nz = ref.ask(m)\n")
    assert len(_unbounded_gets(tmp_path)) == 3  # the check can fail


# -- SystemExit in a stage of the daemon -------------------------------------------------

_LAUNCHER = """
import sys
from briefd.actors.stage import StageActor

doomed = sys.argv[1]
real_call = StageActor._call

def _call(self):
    if self.spec.name == doomed:
        raise SystemExit(0)  # even a "clean" exit inside a stage is no way to stop a daemon
    return real_call(self)

StageActor._call = _call
from briefd.cli import main
raise SystemExit(main(["serve", *sys.argv[2:]]))
"""


class _LaunchedDaemon(Daemon):
    """``briefd serve`` whose ``doomed`` stage raises SystemExit when its call would start.

    The test seam is StageActor._call (documented as one), patched in the child by a
    launcher: the daemon's production code has no hook for it.
    """

    def __init__(self, tmp: Path, base_url: str, doomed: str, **settings: Any) -> None:
        super().__init__(tmp, base_url, **settings)
        self.doomed = doomed

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-c", _LAUNCHER, self.doomed, *args]


def test_system_exit_in_a_stage_exits_the_daemon_and_a_restart_resumes(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """ANNEX_JSON raises SystemExit in ``briefd serve``: the daemon exits non-zero (not a
    half-dead process still answering /healthz), the three documents already bought are in
    the journal, and a restart on the same data dir finishes the job without buying any of
    them again."""
    with SimServer(SimProfile(scale=0.01)) as sim:
        first = _LaunchedDaemon(tmp_path, sim.base_url, "ANNEX_JSON")
        daemons.append(first.start())
        with first.client() as client:
            client.submit(make_job("exit-1"))
        code = first.wait_exit(20)
        assert code == EXIT_FATAL, first.log()
        assert any(e.get("level") == "CRITICAL" for e in _json_lines(first)), first.log()
        done = {stage for job, stage in complete_stages(first.data_dir) if job == "exit-1"}
        assert done == set(STAGES) - {"ANNEX_JSON"}

        second = Daemon(tmp_path, sim.base_url)
        daemons.append(second.start())
        with second.client() as client:
            result = client.result("exit-1", timeout=60)
        assert result.status is JobStatus.SUCCEEDED
        assert sim.stats().by_job_stage["exit-1"] == dict.fromkeys(STAGES, 1)


def _json_lines(d: Daemon) -> list[dict[str, Any]]:
    out = []
    for line in d.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
