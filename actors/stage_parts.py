"""Two concerns of the stage actor kept apart from its life cycle: routes and the deadline.

:class:`~briefd.actors.stage.StageActor` is one actor; these are its parts, mixed in,
so that ``stage.py`` reads as the stage's steps (token, call, outcome) and each part
reads whole:

* :class:`StageRoutes`: which ``endpoint:model`` the stage calls, moving to the next
  route of its model alias when another endpoint could fix a failure, and past routes
  whose breaker is open (:mod:`briefd.llm.routing`);
* :class:`StageDeadline`: the job's ``deadline_s``: nothing new is spent past it.

They share the actor's state; the attributes they read are declared here for the
type checker and set in ``StageActor.__init__``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pykka

from briefd import deadlines
from briefd.actors.rate_limiter import LimiterRef
from briefd.config import Settings, StageSpec
from briefd.config.endpoints import Route
from briefd.llm.abort import CallAbort
from briefd.llm.call import ChatClient
from briefd.llm.errors import CallError
from briefd.llm.retry import RetryDriver, make_retrying
from briefd.llm.routing import Routing
from briefd.messages import (
    CancelTokenRequest,
    ErrorCode,
    Event,
    PipelineError,
    ReportRateLimit,
    StageFailedOver,
    Tick,
)
from briefd.timers import Timers


class _StageState:
    """What the parts read of the stage actor (set by its ``__init__``)."""

    job_id: str
    spec: StageSpec
    actor_urn: str
    actor_ref: Any
    _settings: Settings
    _base_url: str
    _limiter: LimiterRef
    _abort: CallAbort | None
    _client: ChatClient | None
    _driver: RetryDriver | None
    _timers: Timers
    _finished: bool
    _asked: bool
    _started_at: float | None
    _admitted_at: float
    _deadline_at: float | None
    _routing: Routing
    _routes: tuple[Route, ...]
    _route_at: int
    _attempts_before: int

    @property
    def _attempt(self) -> int:
        raise NotImplementedError

    def _report(self, event: Event) -> None:
        raise NotImplementedError

    def _fail(self, error: PipelineError) -> None:
        raise NotImplementedError

    def _request_token(self) -> None:
        raise NotImplementedError


class StageRoutes(_StageState):
    """Where the stage's calls go, and when it moves on."""

    def _report_rate_limit(self, endpoint: str, wait_s: float) -> None:
        self._limiter.tell(
            ReportRateLimit(
                job_id=self.job_id, stage=self.spec.name, endpoint=endpoint, retry_after_s=wait_s
            )
        )

    @property
    def _route(self) -> Route:
        return self._routes[self._route_at]

    def _new_client(self) -> ChatClient:
        route = self._route
        return ChatClient(
            self._settings,
            self._base_url,
            self._abort,
            endpoint=self._routing.endpoints[route.endpoint],
            model=route.model,
            api_key=self._routing.key(route.endpoint),
        )

    def _move_to(self, index: int, reason: PipelineError, *, skipped: bool) -> None:
        """Leave the current route for ``index``: a new client, a fresh retry budget."""
        left = self._route
        self._route_at = index
        if self._client is not None:
            self._client.close()
        self._client = None
        if self._driver is not None:
            self._attempts_before += self._driver.attempt
            self._driver = RetryDriver(make_retrying(self._settings))
        self._report(
            StageFailedOver(
                job_id=self.job_id,
                stage=self.spec.name,
                from_route=str(left),
                to_route=str(self._route),
                reason=reason,
                skipped=skipped,
            )
        )

    def _fail_over(self, err: CallError) -> None:
        """Another endpoint could fix ``err``: ask for a token there now, no backoff."""
        self._move_to(self._route_at + 1, err.to_pipeline_error(self.spec.name), skipped=False)
        self._request_token()

    def _skip_open_circuits(self) -> None:
        """Move past routes whose endpoint's breaker is open, while a later one would take
        the call; with none open (or none left), the current route is called anyway."""
        breakers = self._routing.breakers
        for index in range(self._route_at, len(self._routes)):
            if breakers.allow(self._routes[index].endpoint):
                if index != self._route_at:
                    skipped = self._route.endpoint
                    reason = PipelineError(
                        stage=self.spec.name,
                        code=ErrorCode.CONNECTION,
                        message=f"endpoint {skipped}'s circuit breaker is open",
                        hint="it failed repeatedly; tried again after BRIEFD_BREAKER_COOLDOWN_S",
                    )
                    self._move_to(index, reason, skipped=True)
                return

    def _circuit_opened_while_waiting(self) -> bool:
        """True (and moved on) if the breaker of the route this stage asked a token for
        opened while it waited, and a later route would take the call: the call would only
        add to the dead endpoint's failures. A half-open probe is not left."""
        breakers = self._routing.breakers
        if self._route_at + 1 >= len(self._routes) or not breakers.is_open(self._route.endpoint):
            return False
        self._skip_open_circuits()
        return True


class StageDeadline(_StageState):
    """The job's deadline: past it, a stage waiting or in a backoff ends ``DEADLINE_EXCEEDED``."""

    def _arm_deadline(self) -> None:
        """Wake this stage (a ``Tick``) when the job's deadline passes."""
        if self._deadline_at is not None:
            delay = self._deadline_at - time.time()
            if delay > 0:
                self._timers.tell_later(self.actor_ref, delay, Tick())

    def _check_deadline(self) -> None:
        """At the deadline: a stage waiting for a token or in a backoff ends now.

        A call in flight holds this actor's thread, so a ``Tick`` is never handled
        during one: the call ends first, and its failure is not retried
        (:meth:`_retry_misses_deadline`).
        """
        if self._finished or self._started_at is None or not deadlines.passed(self._deadline_at):
            return
        if self._asked:
            self._end_at_deadline(f"attempt {self._attempt} was waiting for an execution token")
        else:
            self._end_at_deadline(f"attempt {self._attempt} was waiting to be retried")

    def _retry_misses_deadline(self, wait_s: float, attempt: int, err: CallError) -> bool:
        """End the stage instead of retrying when the retry would start past the deadline."""
        at = self._deadline_at
        if at is None or time.time() + wait_s < at:
            return False
        why = err.to_pipeline_error(self.spec.name).message
        if deadlines.passed(at):
            self._end_at_deadline(f"attempt {attempt}, made before it, failed ({why})")
        else:
            retry = f"its retry in {wait_s:.1f}s would start after it"
            self._end_at_deadline(f"attempt {attempt} failed ({why}) and {retry}")
        return True

    def _end_at_deadline(self, what: str) -> None:
        """Fail ``DEADLINE_EXCEEDED``: withdraw a token request, drop the timers."""
        if self._finished:
            return
        if self._asked:
            self._asked = False
            with contextlib.suppress(pykka.ActorDeadError):
                self._limiter.tell(
                    CancelTokenRequest(
                        job_id=self.job_id, stage=self.spec.name, requester=self.actor_urn
                    )
                )
        self._timers.close()  # a backoff's ResumeStage: nothing is retried past the deadline
        assert self._deadline_at is not None
        self._fail(
            deadlines.deadline_error(
                self.spec.name, at=self._deadline_at, admitted_at=self._admitted_at, what=what
            )
        )
