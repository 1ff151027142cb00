"""The messages of several daemons on one PostgreSQL database (``BRIEFD_DATABASE_URL``).

Jobs are *claimed*, not owned: a daemon takes ready jobs under a lease that it
renews, and each claim carries a fencing token that every write of the run
must show (:mod:`briefd.store.pg_claims`). The events say, in the event log of
the daemon concerned, when it took a job (and whether it took it over from a
daemon whose lease lapsed) and when it lost one. The commands wake the root
actor when the database says there is something to do (LISTEN/NOTIFY), so no
daemon polls faster than ``BRIEFD_POLL_S``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from briefd.messages.base import Command, Event


class JobClaimed(Event):
    """This daemon claimed the job: it runs it until the job ends or the claim is lost."""

    type: Literal["JobClaimed"] = "JobClaimed"
    job_id: str
    daemon: str = Field(description="The claiming daemon's id (host:pid:random).")
    fence: int = Field(description="The claim's fencing token; every write of the run shows it.")
    taken_over: bool = Field(
        default=False,
        description="Another daemon held the job (running it or queued there); its lease lapsed.",
    )
    previous_owner: str | None = Field(
        default=None, description="That daemon's id, when taken over."
    )
    waited_s: float = Field(default=0.0, description="Seconds since the job was submitted.")


class JobClaimLost(Event):
    """This daemon's claim on a running job lapsed and another daemon took it (a pause or a
    partition longer than the lease): the run here stops; its writes are refused by the fence."""

    type: Literal["JobClaimLost"] = "JobClaimLost"
    job_id: str
    daemon: str = Field(description="This daemon's id.")


class ClaimJobs(Command):
    """Wake the root: jobs may be waiting in the database (a submission anywhere, a slot freed,
    a lease lapsed); it claims as many as it has room for."""

    type: Literal["ClaimJobs"] = "ClaimJobs"


class CheckCancels(Command):
    """Wake the root: a cancel was asked, through another daemon, of a job this one may hold."""

    type: Literal["CheckCancels"] = "CheckCancels"


class TokensGranted(Command):
    """The listener -> the cluster limiter: a daemon (maybe another) granted this one tokens."""

    type: Literal["TokensGranted"] = "TokensGranted"


class RenewTokens(Command):
    """Timer -> the cluster limiter: renew this daemon's presence and its token leases."""

    type: Literal["RenewTokens"] = "RenewTokens"
