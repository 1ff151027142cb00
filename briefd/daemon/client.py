"""The Python client of ``briefd serve``'s HTTP API.

::

    import briefd

    client = briefd.Client()                  # BRIEFD_LISTEN and the daemon's token file
    job_id = client.submit("job.json")        # a path, a dict or a JobSpec
    sub = client.submit_job("job.json")       # the same, and whether it was new
    result = client.result(job_id, timeout=600)
    print(result.status, result.documents["BRIEFING_MD"])
    for event in client.events(job_id):      # as they happen (Server-Sent Events)
        print(event.type)                     # ... JobCompleted ends the stream

It reads the same settings as the daemon (``BRIEFD_LISTEN``,
``BRIEFD_TOKEN_FILE`` / ``BRIEFD_DATA_DIR``, ``--config`` files), so on the
daemon's machine it needs no arguments. Errors the daemon reports raise
:class:`DaemonError` with its ``code`` and ``message``; the token never appears
in one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, NoReturn

import pydantic
import requests
from sseclient import SSEClient

from briefd.config import ConfigError, Settings
from briefd.messages import Event, JobInfo, JobResult, JobSpec, JobState, parse_message

MAX_WAIT_PER_REQUEST_S = 30.0
STREAM_READ_S = 45.0
"""A stream silent this long (three missed heartbeats) is taken as cut, and reconnected."""
RECONNECT_S = (0.2, 5.0)
"""The first and the longest pause before connecting a stream again (doubling between)."""


class Submitted(NamedTuple):
    """What the daemon said to a submission: the job, its state, and whether it is new.

    ``created`` is false when the daemon already had a job with this id: that job
    is the one reported (its state may be terminal), and nothing runs twice.
    """

    job_id: str
    state: JobState
    created: bool


class DaemonError(Exception):
    """The daemon refused a request: ``status`` (HTTP), ``code`` and ``message`` say why."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class DaemonUnavailable(DaemonError):
    """The daemon did not answer (not running, restarting, wrong ``BRIEFD_LISTEN``)."""


class Client:
    """Talks to one daemon over one HTTP session (not shared between threads)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        settings: Settings | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if url is None or token is None:
            settings = settings if settings is not None else Settings.load()
        if url is None:
            assert settings is not None
            url = f"http://{settings.listen}"
        if token is None:
            assert settings is not None
            token = _read_token(settings.resolved_token_file())
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # the daemon is on loopback: never via a proxy
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["User-Agent"] = "briefd-client"
        self.last_event_id: int | None = None
        """The id of the last event :meth:`events` yielded (resume after it)."""

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------

    def submit(self, job: JobSpec | dict[str, Any] | str | Path) -> str:
        """Submit a job (a JobSpec, its dict, or a JSON file); returns its ``job_id``.

        Submitting an id the daemon already has returns that job (it never runs twice);
        :meth:`submit_job` also says whether it was new.
        Raises :class:`DaemonError` (``queue_full`` has ``retry_after_s``).
        """
        return self.submit_job(job).job_id

    def submit_job(self, job: JobSpec | dict[str, Any] | str | Path) -> Submitted:
        """:meth:`submit`, answering with the job's state and whether this call created it."""
        if isinstance(job, str | Path):
            job = _read_job_file(Path(job))
        body = job.model_dump(mode="json") if isinstance(job, JobSpec) else job
        data = self._call("POST", "/v1/jobs", json=body)
        # 202 and created=true for a new job, 200 and false for one the daemon already had.
        created = bool(data.get("created", True))
        return Submitted(str(data["job_id"]), JobState(data["status"]), created)

    def status(self, job_id: str) -> JobInfo:
        """Its state, per-stage states and progress."""
        return JobInfo.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def result(self, job_id: str, wait: bool = True, timeout: float = 600.0) -> JobResult:
        """The job's result; with ``wait``, blocks up to ``timeout`` seconds for it.

        Raises :class:`TimeoutError` when the job is still running at the end, and
        :class:`DaemonError` ``not_finished`` when ``wait`` is false and it is not done.
        While waiting, a daemon that restarts is waited for too.
        """
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            left = deadline - time.monotonic()
            wait_s = round(min(max(left, 0.0), MAX_WAIT_PER_REQUEST_S), 3) if wait else 0.0
            try:
                data = self._call(
                    "GET", f"/v1/jobs/{job_id}/result", params={"wait": wait_s}, extra_s=wait_s
                )
                return JobResult.model_validate(data)
            except DaemonUnavailable:
                if not wait or left <= 0:
                    raise
                pause.wait(min(0.5, max(left, 0.0)))
            except DaemonError as err:
                if err.code != "not_finished" or not wait:
                    raise
                if deadline - time.monotonic() <= 0:
                    raise TimeoutError(f"job {job_id}: {err.message} after {timeout:g}s") from None

    def cancel(self, job_id: str) -> JobState:
        """Cancel it: ``cancelled`` if it was waiting, ``running`` while its calls are abandoned."""
        return JobState(self._call("DELETE", f"/v1/jobs/{job_id}")["status"])

    def jobs(self, status: JobState | str | None = None, limit: int = 100) -> list[JobInfo]:
        """The newest ``limit`` jobs, optionally only those in ``status``."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = JobState(status).value
        data = self._call("GET", "/v1/jobs", params=params)
        return [JobInfo.model_validate(j) for j in data["jobs"]]

    def events(
        self, job_id: str | None, after: int | None = None, *, timeout: float | None = None
    ) -> Iterator[Event]:
        """Yield the job's events as they happen (``job_id`` None: every job's), from the
        daemon's Server-Sent Events stream, until the job's ``JobCompleted`` (included).

        ``after``: start after this event id (the job's sequence number; for every job's
        stream, the global one); None replays the job from its first event. A cut
        connection, or a daemon that restarts, is reconnected with ``Last-Event-ID``:
        no event is lost or repeated. ``timeout``: TimeoutError after that many seconds.
        :attr:`last_event_id` is the id of the last event yielded. Raises
        :class:`DaemonError` when the daemon refuses the stream (``not_found``, ...).
        """
        path = f"/v1/jobs/{job_id}/events" if job_id is not None else "/v1/events"
        deadline = None if timeout is None else time.monotonic() + timeout
        self.last_event_id = after
        pause, wait_s = threading.Event(), RECONNECT_S[0]
        while True:
            try:
                for event in self._stream(path, deadline):
                    wait_s = RECONNECT_S[0]
                    yield event
                    if job_id is not None and event.type == "JobCompleted":
                        return
            except _StreamEnded:
                return
            except (requests.RequestException, DaemonUnavailable):
                pass  # cut: connect again from the last id
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{path}: no end of the stream after {timeout:g}s")
            pause.wait(wait_s if left is None else min(wait_s, left))
            wait_s = min(wait_s * 2, RECONNECT_S[1])

    def _stream(self, path: str, deadline: float | None) -> Iterator[Event]:
        """One connection of :meth:`events`: its events, parsed."""
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        try:
            resp = self._session.get(
                self.url + path,
                headers=headers,
                stream=True,
                timeout=(self._timeout_s, STREAM_READ_S),
            )
        except requests.RequestException as err:
            raise DaemonUnavailable(0, "unavailable", f"cannot reach briefd at {self.url}") from err
        with resp:
            if resp.status_code == 204:  # a finished job, nothing after our last id
                raise _StreamEnded
            if resp.status_code >= 400:
                self._raise_for(resp)
            chunks = resp.iter_content(chunk_size=None)
            for sse in SSEClient(_until(chunks, deadline)).events():
                try:
                    event = parse_message(sse.data)
                except (pydantic.ValidationError, ValueError):  # a newer daemon's event type
                    continue
                if sse.id and sse.id.isdigit():
                    self.last_event_id = int(sse.id)
                if isinstance(event, Event):
                    yield event

    def healthy(self) -> bool:
        """True when the daemon answers ``/healthz`` with ok."""
        try:
            resp = self._session.get(f"{self.url}/healthz", timeout=self._timeout_s)
        except requests.RequestException:
            return False
        return resp.status_code == 200

    # -- plumbing --------------------------------------------------------------------

    def _call(self, method: str, path: str, *, extra_s: float = 0.0, **kwargs: Any) -> Any:
        try:
            resp = self._session.request(
                method, self.url + path, timeout=self._timeout_s + extra_s, **kwargs
            )
        except requests.RequestException as err:
            raise DaemonUnavailable(
                0,
                "unavailable",
                f"cannot reach briefd at {self.url} ({type(err).__name__}): "
                "is `briefd serve` running, with the same BRIEFD_LISTEN?",
            ) from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code < 400 and data is not None:
            return data
        self._raise_for(resp, data)

    @staticmethod
    def _raise_for(resp: requests.Response, data: Any = None) -> NoReturn:
        """Raise the daemon's refusal as a :class:`DaemonError`."""
        if data is None:
            try:
                data = resp.json()
            except ValueError:
                data = None
        detail = data.get("error") if isinstance(data, dict) else None
        if not isinstance(detail, dict):
            detail = {"code": "http_error", "message": f"HTTP {resp.status_code}"}
        retry_after = resp.headers.get("Retry-After")
        raise DaemonError(
            resp.status_code,
            str(detail.get("code", "http_error")),
            str(detail.get("message", "")),
            field=detail.get("field"),
            retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )


class _StreamEnded(Exception):
    """The daemon has nothing more for this stream (204)."""


def _until(chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
    """``chunks`` until ``deadline`` (heartbeats arrive every 15 s: it is checked then)."""
    for chunk in chunks:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("the event stream did not end in time")
        yield chunk


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(
            f"token file {path}: {err.strerror or err} (the daemon makes it on first start; "
            "set BRIEFD_DATA_DIR or BRIEFD_TOKEN_FILE as the daemon has them)"
        ) from None
    if not token:
        raise ConfigError(f"token file {path}: empty")
    return token


def _read_job_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"job file {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ConfigError(f"job file {path}: invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"job file {path}: must be a JSON object")
    return data
