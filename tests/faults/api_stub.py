"""A daemon backend with nothing behind it, for tests of the API's front door.

``test_api_guards`` and ``test_api_origins`` run the real
:class:`~briefd.daemon.http_api.ApiServer` in-process over this stub, so Host, Origin
and deadline checks are exercised over real TCP without actors or a journal; ``calls``
counts the requests that got past the walls.
"""

from __future__ import annotations

import threading
from typing import Any

from briefd.actors.admission import Admission
from briefd.messages import JobInfo, JobResult, JobSpec, JobState

TOKEN = "test-token-0123456789"


def auth() -> dict[str, str]:
    """The Authorization header of :data:`TOKEN`."""
    return {"Authorization": f"Bearer {TOKEN}"}


class StubBackend:
    """What the API needs of a daemon: nothing runs, every job list is empty."""

    def __init__(self) -> None:
        self.calls = 0
        self.delay_s = 0.0

    def validate(self, data: Any) -> JobSpec:
        raise NotImplementedError

    def submit(self, job: JobSpec) -> Admission:
        raise NotImplementedError

    def cancel(self, job_id: str) -> JobState | None:
        return None

    def info(self, job_id: str) -> JobInfo | None:
        return None

    def result(self, job_id: str) -> JobResult | None:
        return None

    def list_jobs(self, status: JobState | None, limit: int) -> list[JobInfo]:
        self.calls += 1
        if self.delay_s:  # a slow journal: the request is being served, not read
            threading.Event().wait(self.delay_s)
        return []

    def metrics_body(self) -> bytes:
        return b""

    def healthy(self) -> bool:
        return True

    def health(self) -> tuple[str, str]:
        return ("ok", "")
