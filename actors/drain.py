"""The stage actor the daemon runs: one that stops starting calls once the daemon drains.

On SIGTERM the daemon must let calls in flight finish (their documents are
paid for) but start no new one; the stage actor itself knows nothing of
daemons, so the root actor builds this subclass with the drain flag baked in.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka

from briefd.actors.stage import StageActor
from briefd.messages import ReleaseToken, ResumeStage, StartStage, Tick, TokenGranted

AnyRef = pykka.ActorRef[Any]


def drainable_stage_actor(base: type[StageActor], drain: threading.Event) -> type[StageActor]:
    """``base`` that starts no call once ``drain`` is set, on a daemon thread.

    While draining, a stage that has not started never starts and a token
    granted too late goes straight back; a call already in flight finishes and
    reports. ``Tick`` is answered as a no-op so the daemon can ``ask`` it as a
    barrier ("everything you had to say is told"); before the drain it is the
    stage's own (its deadline's timer). The daemon thread lets the
    process exit when the grace period ends with a call still in flight.
    """

    class DrainableStageActor(base):  # type: ignore[valid-type,misc]
        use_daemon_thread = True

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._drain_limiter: AnyRef = kwargs["limiter"]

        def on_receive(self, message: Any) -> Any:
            if drain.is_set():
                if isinstance(message, Tick):  # no deadline is enforced while draining
                    return None
                if isinstance(message, StartStage | ResumeStage):
                    return None
                if isinstance(message, TokenGranted):
                    self._drain_limiter.tell(
                        ReleaseToken(
                            job_id=message.job_id, stage=message.stage, lease_id=message.lease_id
                        )
                    )
                    return None
            return super().on_receive(message)

    return DrainableStageActor
