"""The stage actor: one document of one job, from request to validated output.

Its life, all by message, never blocking on another actor::

    StartStage -> RequestToken ... TokenGranted -> HTTP call -> ReleaseToken
        ok     -> extract + validate -> StageSucceeded
        error  -> tenacity says retry -> StageRetrying, timer -> ResumeStage -> RequestToken ...
               -> tenacity says stop  -> StageFailed

The token is held only while the HTTP call is in flight, never during a
backoff. Past the job's deadline (``deadline_at``, :mod:`briefd.deadlines`) a
stage waiting for a token or in a backoff ends ``DEADLINE_EXCEEDED``, woken by a
``Tick`` its timer tells it then; a call on the wire is left to finish, and not
retried if it fails. Any unexpected exception becomes ``StageFailed`` with code
``CRASHED``: a stage's failure stays in the stage. A ``SystemExit`` or
``KeyboardInterrupt`` is not a stage's failure but the process going down: it
is passed on (through :meth:`StageActor.on_fatal`) to whoever owns the process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger

from briefd import deadlines, worktime
from briefd.actors.hedge import StageHedging
from briefd.actors.rate_limiter import LimiterRef
from briefd.actors.stage_parts import StageDeadline, StageRoutes
from briefd.actors.stage_progress import ProgressReporter
from briefd.config import Settings, StageSpec
from briefd.latency import StageClock
from briefd.limits.gcra import estimate_tokens
from briefd.llm.abort import CallAbort
from briefd.llm.call import ChatClient, Completion, build_request
from briefd.llm.errors import CallCancelled, CallError, InvalidOutputError, StatusError
from briefd.llm.extract import extract_document
from briefd.llm.retry import RetryDriver, make_retrying, outcome_of
from briefd.llm.routing import Routing, counts_against, fails_over, fails_over_after_retries
from briefd.messages import (
    CancelTokenRequest,
    ErrorCode,
    Event,
    PipelineError,
    ReleaseToken,
    RequestToken,
    ResumeStage,
    StageActorStopped,
    StageFailed,
    StageRetrying,
    StageStarted,
    StageSucceeded,
    StartStage,
    Tick,
    TokenGranted,
    Usage,
)
from briefd.messages.token import Outcome, RateLimits
from briefd.tenants.weights import weight_of
from briefd.threads import PooledThreadingActor
from briefd.timers import Timers

AnyRef = pykka.ActorRef[Any]


class StageActor(StageRoutes, StageDeadline, StageHedging, PooledThreadingActor):
    """Runs one stage of one job; reports to its coordinator by ``tell``."""

    def __init__(
        self,
        *,
        job_id: str,
        spec: StageSpec,
        prompt: str,
        settings: Settings,
        base_url: str,
        limiter: LimiterRef,
        coordinator: AnyRef,
        priority: int = 0,
        abort: CallAbort | None = None,
        admitted_at: float = 0.0,
        job_priority: int = 0,
        downstream: dict[str, list[str]] | None = None,
        routing: Routing | None = None,
        model: str | None = None,
        deadline_at: float | None = None,
        tenant: str = "default",
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self._tenant = tenant  # its RequestTokens are shared fairly by tenant, by weight
        self.spec = spec
        self._prompt = prompt
        self._settings = settings
        self._base_url = base_url
        self._limiter = limiter
        self._coordinator = coordinator
        self._priority = priority
        self._admitted_at = admitted_at  # with job_priority and downstream: the limiter's order
        self._job_priority = job_priority
        self._downstream = downstream or {}
        self._abort = abort  # set by the coordinator when the job is cancelled
        self._deadline_at = deadline_at  # Unix time (admitted_at's clock); None: no deadline
        self._client: ChatClient | None = None
        self._driver: RetryDriver | None = None  # made in the actor's own thread
        self._timers = Timers()
        self._lease: int | None = None
        self._asked = False  # a RequestToken not yet answered: withdraw it on stop
        self._started_at: float | None = None
        self._finished = False
        self._usage = Usage()
        self._extra_messages: list[dict[str, str]] = []
        self._reasked = False
        self._started: StageStarted | None = None  # this attempt's, until told
        self._clock = StageClock()  # queued, call, ttft, backoff: where the stage's time went
        # Where the calls go: the routes of the stage's model alias, in failover order.
        self._routing = routing if routing is not None else Routing.for_url(settings, base_url)
        self._routes = self._routing.routes(model)
        self._route_at = 0
        self._attempts_before = 0  # calls made on the routes it left

    # -- pykka hooks ---------------------------------------------------------

    def on_start(self) -> None:
        # A failing on_start would kill the actor before it could report anything (pykka
        # calls neither on_failure nor on_stop); _call makes the client again, where a
        # failure becomes this stage's CRASHED error.
        try:
            self._client = self._new_client()
        except Exception as err:
            logger.opt(exception=err).error("{} {}: no client yet", self.job_id, self.spec.name)

    def on_receive(self, message: Any) -> Any:
        try:
            match message:
                case StartStage():
                    self._prompt = message.prompt or self._prompt  # rendered from upstreams
                    self._started_at = time.monotonic()
                    self._driver = RetryDriver(make_retrying(self._settings))
                    self._arm_deadline()
                    self._request_token()
                case ResumeStage():
                    self._clock.resumed()
                    self._request_token()
                case TokenGranted():
                    self._on_token(message)
                case Tick():
                    # the deadline's timer (else a no-op: an ask of it is a barrier)
                    self._check_deadline()
                case _:
                    logger.warning("{} {}: unexpected {!r}", self.job_id, self.spec.name, message)
        except Exception as err:  # the stage's failure stays in the stage
            self._release()
            self._fail(
                PipelineError(
                    stage=self.spec.name,
                    code=ErrorCode.CRASHED,
                    message=f"stage actor crashed: {type(err).__name__}: {err}",
                    hint="a bug in briefd or in a plug-in; see the log for the traceback",
                )
            )
            logger.opt(exception=err).error("{} {} crashed", self.job_id, self.spec.name)
        except BaseException as err:  # SystemExit, KeyboardInterrupt: the process is going
            logger.critical("{} {}: {!r}: going down", self.job_id, self.spec.name, err)
            self._release()
            self.on_fatal(err)
            raise  # pykka then stops every actor; no StageFailed: the run died, not the stage
        return None

    def on_fatal(self, error: BaseException) -> None:
        """Hook: a ``BaseException`` that is not an ``Exception`` escaped a handler.

        Called in the stage's thread just before the exception goes on to pykka
        (which stops every actor). The stage does not report a failure: the job
        did not fail, its run died, and whoever owns the process decides what
        that means (the daemon exits so that the journal resumes the job). The
        default does nothing; :func:`with_fatal_hook` makes a class that calls back.
        """

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: Any,
    ) -> None:
        # pykka calls on_failure instead of on_stop: clean up as on_stop would, so the
        # token goes back now (not at the next reap) and no timer fires into the dead actor.
        self._cleanup()
        self._fail(
            PipelineError(
                stage=self.spec.name,
                code=ErrorCode.CRASHED,
                message=f"stage actor died: {exception_type.__name__ if exception_type else '?'}",
                hint="a bug in briefd; see the log for the traceback",
            )
        )

    def on_stop(self) -> None:
        self._cleanup()

    def on_exit(self) -> None:
        # However this actor ended, its coordinator hears it now, not at a periodic check:
        # a stage still running there died without reporting (say, in on_start).
        self._report(StageActorStopped(job_id=self.job_id, stage=self.spec.name))

    def _cleanup(self) -> None:
        self._timers.close()
        self._release()
        if self._asked:  # a stage that ended has nothing queued: no message to the limiter
            with contextlib.suppress(pykka.ActorDeadError):
                self._limiter.tell(
                    CancelTokenRequest(
                        job_id=self.job_id, stage=self.spec.name, requester=self.actor_urn
                    )
                )
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    # -- the steps -----------------------------------------------------------

    def _request_token(self) -> None:
        if self._finished or (self._abort is not None and self._abort.aborted):
            return
        if deadlines.passed(self._deadline_at):
            self._end_at_deadline(f"attempt {self._attempt} was not started")
            return
        self._skip_open_circuits()
        self._asked = True
        self._clock.asked()
        self._limiter.tell(
            RequestToken(
                job_id=self.job_id,
                stage=self.spec.name,
                endpoint=self._route.endpoint,
                requester=self.actor_urn,
                tenant=self._tenant,
                weight=weight_of(self._tenant),
                priority=self._priority,
                admitted_at=self._admitted_at,
                job_priority=self._job_priority,
                downstream=self._downstream,
                est_tokens=estimate_tokens(
                    len(self._prompt)
                    + len(self.spec.system or "")
                    + sum(len(m["content"]) for m in self._extra_messages),
                    self.spec.max_tokens,
                ),
            )
        )

    def _on_token(self, granted: TokenGranted) -> None:
        self._asked = False
        self._clock.granted()
        if self._finished or self._lease is not None:
            self._limiter.tell(
                ReleaseToken(job_id=self.job_id, stage=self.spec.name, lease_id=granted.lease_id)
            )
            return
        if deadlines.passed(self._deadline_at):  # granted, but too late to spend anything
            self._limiter.tell(
                ReleaseToken(job_id=self.job_id, stage=self.spec.name, lease_id=granted.lease_id)
            )
            self._end_at_deadline(f"attempt {self._attempt} got its token after it")
            return
        if self._circuit_opened_while_waiting():  # the token is the old endpoint's: give it
            self._limiter.tell(  # back unused, and ask for one at the next route
                ReleaseToken(job_id=self.job_id, stage=self.spec.name, lease_id=granted.lease_id)
            )
            self._request_token()
            return
        self._lease = granted.lease_id
        attempt = self._attempt
        # StageStarted is told once the request is on the wire (on_sent), else before the
        # attempt's outcome: the coordinator it wakes would compete with this thread for
        # the interpreter while the request is built and written (every call's critical path).
        route = self._route
        self._started = StageStarted(
            job_id=self.job_id,
            stage=self.spec.name,
            attempt=attempt,
            endpoint=route.endpoint,
            model=route.model,
            queued_ms=self._clock.attempt_queued_ms,
        )
        self._clock.call_started()
        key = worktime.key_of(
            route.endpoint, route.model, self._routing.endpoints[route.endpoint].base_url
        )
        ticket = worktime.BOOK.started(key)  # learns the server's alone rates (speed-up)
        work = None
        try:
            completion = self._call()
            work = completion.work
        except CallError as err:
            worktime.BOOK.ended(ticket, None)
            self._clock.call_ended(ttft_ms=getattr(err, "ttft_ms", None))
            self._tell_started()
            # Decide (and report a 429's cool-down) before the token goes back, so the
            # limiter pauses grants before it could hand this token to another stage.
            self._after_failure(err)
            self._release(outcome_of(err), limits=getattr(err, "limits", None))
            return
        finally:
            alone = worktime.BOOK.ended(ticket, work)  # once: after the except's, a no-op
            self._tell_started()
        self._clock.call_ended(
            ttft_ms=completion.ttft_ms,
            server_ms=completion.server_ms,
            work=None if work is None else work.model_copy(update={"shared": not alone}),
            key=key,
        )
        used = completion.usage.prompt_tokens + completion.usage.completion_tokens
        self._release("success", used_tokens=used or None, limits=completion.limits)
        self._routing.breakers.succeeded(route.endpoint)
        self._add_usage(completion)
        try:
            document = extract_document(self.spec, completion.text)
        except InvalidOutputError as err:
            reask = self._settings.reask_invalid_json and not self._reasked
            if reask and not deadlines.passed(self._deadline_at):  # no new call past it
                self._reask(completion.text, err)
                return
            self._after_failure(err)
            return
        self._finished = True
        self._report(
            StageSucceeded(
                job_id=self.job_id,
                stage=self.spec.name,
                document=document,
                elapsed_ms=self._elapsed_ms(),
                attempts=attempt,
                usage=self._usage,
                served_by=f"{route.endpoint}:{completion.model or route.model}",
                **self._clock.totals(),
            )
        )

    def _call(self) -> Completion:
        """The HTTP call (a seam for tests that need a stage to crash)."""
        if self._client is None:
            self._client = self._new_client()
        route = self._route
        body = build_request(
            self.spec,
            self._prompt,
            self._settings,
            self._extra_messages,
            endpoint=self._routing.endpoints[route.endpoint],
            model=route.model,
        )
        report = ProgressReporter(  # a streamed answer's StageProgress, a few a second
            self.job_id, self.spec.name, self._attempt, self.spec.max_tokens, self._report
        )
        return self._complete_call(body, report)  # hedged, with BRIEFD_HEDGE_AFTER_MS

    def _tell_started(self) -> None:
        """Tell this attempt's ``StageStarted``, once (see :meth:`_on_token`)."""
        if self._started is not None:
            self._report(self._started)
            self._started = None

    def _after_failure(self, err: CallError) -> None:
        if isinstance(err, CallCancelled):  # nobody wants the answer: no retry
            self._fail(err.to_pipeline_error(self.spec.name))
            return
        attempt = self._attempt
        endpoint = self._route.endpoint
        if counts_against(err):
            self._routing.breakers.failed(endpoint, f"{err.code}: {err.message}")
        else:
            self._routing.breakers.released(endpoint)
        has_next = self._route_at + 1 < len(self._routes)
        rate_limited = isinstance(err, StatusError) and err.code is ErrorCode.RATE_LIMITED
        if has_next and fails_over(err, self._settings.failover_after_s):
            if rate_limited and self._settings.rate_limit_cooldown:
                self._report_rate_limit(endpoint, getattr(err, "retry_after", None) or 0.0)
            self._fail_over(err)
            return
        try:
            assert self._driver is not None
            wait_s = self._driver.failed(err)
        except CallError:
            if has_next and fails_over_after_retries(err):
                self._fail_over(err)
                return
            self._fail(err.to_pipeline_error(self.spec.name))
            return
        if rate_limited and self._settings.rate_limit_cooldown:
            self._report_rate_limit(endpoint, wait_s)
        if self._retry_misses_deadline(wait_s, attempt, err):
            return
        self._report(
            StageRetrying(
                job_id=self.job_id,
                stage=self.spec.name,
                attempt=attempt,
                wait_s=round(wait_s, 3),
                reason=err.to_pipeline_error(self.spec.name),
                call_ms=self._clock.last_call_ms,
                ttft_ms=self._clock.ttft_ms,
            )
        )
        self._clock.backoff_started()
        self._timers.tell_later(
            self.actor_ref,
            wait_s,
            ResumeStage(job_id=self.job_id, stage=self.spec.name, attempt=attempt + 1),
        )

    def _reask(self, text: str, err: InvalidOutputError) -> None:
        """One more call that quotes the validation error (BRIEFD_REASK_INVALID_JSON)."""
        self._reasked = True
        self._extra_messages = [
            {"role": "assistant", "content": text},
            {
                "role": "user",
                "content": f"That answer was not valid: {err.message}. "
                "Reply with the corrected JSON object only.",
            },
        ]
        self._report(
            StageRetrying(
                job_id=self.job_id,
                stage=self.spec.name,
                attempt=self._attempt,
                wait_s=0.0,
                reason=err.to_pipeline_error(self.spec.name),
                call_ms=self._clock.last_call_ms,
                ttft_ms=self._clock.ttft_ms,
            )
        )
        self._request_token()

    # -- helpers -------------------------------------------------------------

    def _fail(self, error: PipelineError) -> None:
        if self._finished:
            return
        self._finished = True
        self._report(
            StageFailed(
                job_id=self.job_id,
                stage=self.spec.name,
                error=error,
                elapsed_ms=self._elapsed_ms(),
                attempts=self._attempt,
                usage=self._usage,
                **self._clock.totals(),
            )
        )

    def _report(self, event: Event) -> None:
        """Tell the coordinator; a coordinator that already ended (cancelled) is no error."""
        with contextlib.suppress(pykka.ActorDeadError):
            self._coordinator.tell(event)

    def _release(
        self,
        outcome: Outcome = "unknown",
        *,
        used_tokens: int | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        """Give the token back, telling the limiter how the call ended (it adapts to it)."""
        if self._lease is None:
            return
        lease, self._lease = self._lease, None
        with contextlib.suppress(pykka.ActorDeadError):
            self._limiter.tell(
                ReleaseToken(
                    job_id=self.job_id,
                    stage=self.spec.name,
                    lease_id=lease,
                    outcome=outcome,
                    used_tokens=used_tokens,
                    limits=limits,
                )
            )

    def _add_usage(self, completion: Completion) -> None:
        self._usage = Usage(
            prompt_tokens=self._usage.prompt_tokens + completion.usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens + completion.usage.completion_tokens,
            cached_tokens=self._usage.cached_tokens + completion.usage.cached_tokens,
            reasoning_tokens=self._usage.reasoning_tokens + completion.usage.reasoning_tokens,
        )

    @property
    def _attempt(self) -> int:
        return self._attempts_before + (self._driver.attempt if self._driver is not None else 0)

    def _elapsed_ms(self) -> int:
        since = self._started_at
        return 0 if since is None else int((time.monotonic() - since) * 1000)


def with_fatal_hook(
    base: type[StageActor], hook: Callable[[BaseException], None]
) -> type[StageActor]:
    """``base`` whose :meth:`StageActor.on_fatal` calls ``hook(error)`` (the daemon's exit)."""

    class FatalHookStageActor(base):  # type: ignore[valid-type,misc]
        def on_fatal(self, error: BaseException) -> None:
            hook(error)

    return FatalHookStageActor
