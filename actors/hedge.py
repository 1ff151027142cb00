"""Hedged calls: a stage's call with no first token after a while gets a second copy.

:class:`StageHedging` is a part of the stage actor (mixed in like those of
:mod:`briefd.actors.stage_parts`): :meth:`StageHedging._complete_call` makes the
stage's call and, with ``BRIEFD_HEDGE_AFTER_MS`` set, arms a timer on the process's
timer thread. If the call has written no token when it fires, and the process's
hedge budget allows (:mod:`briefd.llm.hedge`: at most 10 % of calls), a
:class:`HedgeActor` is started for the second copy, to the next route of the
stage's model alias if it has one (else the same). The first copy to write a token
wins (:class:`~briefd.llm.hedge.Race`); the other is cut.

Honest accounting. The hedge actor asks the rate limiter for a token of its own
(its endpoint's lane), like any stage, and makes the call only once granted and
only if the race is still open; it releases the token with its call's outcome and
usage. So K still bounds the calls in flight, and a hedge waits its turn. What the
losing copy's server reported (usually nothing: it was cut) is added to the stage's
usage, so its cost is in the ledger; every hedge is a :class:`StageHedged` event.

The stage's thread blocks in its call as it always did; when the hedge wins, the
stage's own call is cut and its thread waits for the hedge's answer instead (the
same call, sent twice), polling its job's abort so a cancel still ends it at once.
No actor is asked anything.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, Literal

import pykka
from loguru import logger

from briefd.actors.stage_parts import _StageState
from briefd.config.endpoints import Route
from briefd.llm.answer import Completion
from briefd.llm.call import ChatClient, build_request
from briefd.llm.errors import CallCancelled, CallError, TransportError
from briefd.llm.hedge import BUDGET, HedgePolicy, Race, parse_hedge_after
from briefd.llm.retry import outcome_of
from briefd.llm.stream import StreamProgress
from briefd.messages import (
    CancelTokenRequest,
    ErrorCode,
    ReleaseToken,
    RequestToken,
    StageHedged,
    TokenGranted,
    Usage,
)
from briefd.threads import PooledThreadingActor
from briefd.timers import call_later

_POLL_S = 0.1  # a stage waiting for its hedge's answer checks its job's abort this often
_LOSER_WAIT_S = 5.0  # the cut loser ends at once; this only bounds a stuck one

Progress = Callable[[StreamProgress], None]
Winner = Literal["primary", "hedge", "neither"]


class HedgeActor(PooledThreadingActor):
    """One hedge: ask for a token, make the call if the race is still open, report, stop."""

    def __init__(
        self,
        *,
        race: Race,
        client: ChatClient,
        body: dict[str, Any],
        limiter: Any,
        request: dict[str, Any],
        report: Progress,
    ) -> None:
        super().__init__()
        self._race = race
        self._client = client
        self._body = body
        self._limiter = limiter
        self._request = request
        self._report = report
        self._asked = False

    def on_start(self) -> None:
        self._asked = True
        self._limiter.tell(RequestToken(**self._request, requester=self.actor_urn))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TokenGranted):
            self._asked = False
            try:
                self._run(message.lease_id)
            finally:
                self.actor_ref.stop(block=False)
        return None

    def _run(self, lease: int) -> None:
        race, job_id, stage = self._race, self._request["job_id"], self._request["stage"]
        if not race.open() or race.hedge_abort.aborted:  # the first copy wrote meanwhile
            self._release(lease, "unknown", None, None)
            race.hedge_ended(None, None, None)
            return
        try:
            completion = self._client.complete(
                self._body, job_id=job_id, stage=stage, on_progress=self._progress
            )
        except CallError as err:
            self._release(lease, outcome_of(err), None, getattr(err, "limits", None))
            race.hedge_ended(None, err, None)
            return
        except Exception as err:  # a hedge's bug must not take its stage down
            logger.opt(exception=err).error("{} {} hedge crashed", job_id, stage)
            self._release(lease, "unknown", None, None)
            race.hedge_ended(None, None, None)
            return
        used = completion.usage.prompt_tokens + completion.usage.completion_tokens
        self._release(lease, "success", used or None, completion.limits)
        race.first("hedge")  # a whole answer (not streamed) is its first token too
        race.hedge_ended(completion, None, completion.usage)

    def _progress(self, progress: StreamProgress) -> None:
        if self._race.first("hedge"):
            self._report(progress)

    def _release(self, lease: int, outcome: Any, used: int | None, limits: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._limiter.tell(
                ReleaseToken(
                    job_id=self._request["job_id"],
                    stage=self._request["stage"],
                    lease_id=lease,
                    outcome=outcome,
                    used_tokens=used,
                    limits=limits,
                )
            )

    def on_stop(self) -> None:
        self._end()

    def on_failure(self, *args: Any) -> None:
        self._end()

    def _end(self) -> None:
        if self._asked:  # stopped before its grant: withdraw the request
            self._asked = False
            with contextlib.suppress(pykka.ActorDeadError):
                self._limiter.tell(
                    CancelTokenRequest(
                        job_id=self._request["job_id"],
                        stage=self._request["stage"],
                        requester=self.actor_urn,
                    )
                )
        if not self._race.hedge_done.is_set():
            self._race.hedge_ended(None, None, None)


@functools.lru_cache(maxsize=8)
def _policy(value: str | None) -> HedgePolicy | None:
    after = parse_hedge_after(value)
    return HedgePolicy(after) if after is not None else None


class StageHedging(_StageState):
    """The stage's call, hedged when ``BRIEFD_HEDGE_AFTER_MS`` says (see the module)."""

    _usage: Usage
    _prompt: str
    _extra_messages: list[dict[str, str]]
    _priority: int
    _job_priority: int
    _downstream: dict[str, list[str]]

    def _tell_started(self) -> None:
        raise NotImplementedError

    def _add_usage(self, completion: Completion) -> None:
        raise NotImplementedError

    def _complete_call(self, body: dict[str, Any], report: Progress) -> Completion:
        """The call of this attempt; with hedging on, raced against a second copy."""
        assert self._client is not None
        client, abort = self._client, self._abort
        policy = _policy(self._settings.hedge_after_ms)
        delay = policy.delay_s() if policy is not None else None
        if policy is not None:
            policy.budget.called()
        if policy is None or delay is None or abort is None:
            return self._noting_ttft(
                policy,
                client.complete(
                    body,
                    job_id=self.job_id,
                    stage=self.spec.name,
                    on_sent=self._tell_started,
                    on_progress=report,
                ),
            )
        race = Race(abort)
        hedge: dict[str, Any] = {}  # the hedge actor and its route, once launched
        timer = call_later(delay, lambda: self._launch(race, report, hedge))

        def primary_progress(progress: StreamProgress) -> None:
            if race.first("primary"):
                report(progress)

        won: Winner = "primary"
        try:
            try:
                completion = client.complete(
                    body,
                    job_id=self.job_id,
                    stage=self.spec.name,
                    on_sent=self._tell_started,
                    on_progress=primary_progress,
                )
                race.give_up()
            except CallError as err:
                if race.winner != "hedge" or isinstance(err, CallCancelled):
                    race.give_up()
                    won = "neither" if race.launched else "primary"
                    raise
                won = "hedge"
                completion = self._hedge_answer(race)
        finally:
            timer.cancel()
            if race.launched:
                self._settle_hedge(race, hedge, won, delay)
        return self._noting_ttft(policy, completion)

    def _noting_ttft(self, policy: HedgePolicy | None, completion: Completion) -> Completion:
        if policy is not None and completion.ttft_ms is not None:
            policy.budget.saw_first_token(completion.ttft_ms / 1000)
        return completion

    def _launch(self, race: Race, report: Progress, hedge: dict[str, Any]) -> None:
        """On the timer thread: send the second copy, if it is still wanted and allowed."""
        abort = self._abort
        if not race.open() or (abort is not None and abort.aborted) or not BUDGET.take():
            return
        if not race.launch():
            return
        try:
            route = self._hedge_route()
            spec = self._routing.endpoints[route.endpoint]
            body = build_request(
                self.spec,
                self._prompt,
                self._settings,
                self._extra_messages,
                endpoint=spec,
                model=route.model,
            )
            client = ChatClient(
                self._settings,
                self._base_url,
                race.hedge_abort,
                endpoint=spec,
                model=route.model,
                api_key=self._routing.key(route.endpoint),
            )
            request = {
                "job_id": self.job_id,
                "stage": self.spec.name,
                "endpoint": route.endpoint,
                "priority": self._priority,
                "admitted_at": self._admitted_at,
                "job_priority": self._job_priority,
                "downstream": self._downstream,
            }
            hedge["route"] = str(route)
            hedge["ref"] = HedgeActor.start(
                race=race,
                client=client,
                body=body,
                limiter=self._limiter,
                request=request,
                report=report,
            )
        except Exception as err:  # no hedge, then: the first copy goes on alone
            logger.opt(exception=err).error("{} {}: no hedge", self.job_id, self.spec.name)
            race.hedge_ended(None, None, None)

    def _hedge_route(self) -> Route:
        """The next route of the alias whose breaker is not open, else the current one."""
        for route in self._routes[self._route_at + 1 :]:
            if not self._routing.breakers.is_open(route.endpoint):
                return route
        return self._routes[self._route_at]

    def _hedge_answer(self, race: Race) -> Completion:
        """The hedge wrote first and this stage's call was cut: wait for the hedge's answer
        (a job cancel still ends the wait at once)."""
        abort = self._abort
        while not race.hedge_done.wait(_POLL_S):
            if abort is not None and abort.aborted:
                race.hedge_abort.abort()
                raise CallCancelled()
        if race.hedge_result is not None:
            return race.hedge_result
        if race.hedge_error is not None:
            raise race.hedge_error
        if abort is not None and abort.aborted:
            raise CallCancelled()
        raise TransportError(
            "the hedged call ended without an answer",
            code=ErrorCode.CONNECTION,
            hint="retried automatically",
        )

    def _settle_hedge(self, race: Race, hedge: dict[str, Any], won: Winner, delay: float) -> None:
        """The loser is cut: collect what its server reported, count the hedge, tell it."""
        ref = hedge.get("ref")
        if ref is not None and won != "hedge":
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)  # still waiting for a token: withdraw it
        race.hedge_done.wait(_LOSER_WAIT_S)
        loser = race.hedge_usage if won != "hedge" else Usage()
        if won != "hedge" and loser != Usage():
            self._add_usage(Completion(text="", finish_reason=None, usage=loser))
        self._report(
            StageHedged(
                job_id=self.job_id,
                stage=self.spec.name,
                attempt=self._attempt,
                after_ms=round(delay * 1000),
                route=hedge.get("route", ""),
                winner="hedge"
                if won == "hedge"
                else ("neither" if won == "neither" else "primary"),
                usage=loser,
            )
        )
