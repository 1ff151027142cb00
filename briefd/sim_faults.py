"""What the simulated chat server (:mod:`briefd.sim`) answers, and its bookkeeping.

Kept apart from the HTTP plumbing so the rules that decide *what* a request gets (which
fault applies, how long it waits, the deterministic content) can be read and unit-tested
without sockets, and so that all mutable state tests rely on (exact in-flight counts,
fault budgets) lives behind a single lock in :class:`SimLedger`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    ValidationError,
    model_validator,
)

from briefd.sim_schema import example_for_schema

DEFAULT_LATENCY_S: dict[str, float] = {
    "BRIEFING_MD": 7.0,
    "PLAYS_MD": 7.0,
    "PROCUREMENT_JSON": 5.0,
    "ANNEX_JSON": 6.0,
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


MODEL_ID = "briefd-sim"
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI-style error JSON, so clients exercise their real error parsing."""
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "api_error", None))
    return {"error": {"message": message, "type": kind, "code": code}}


def _text_of(content: object) -> str:
    """Plain text of a message ``content`` (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def render_content(
    stage: str,
    prompt: str,
    *,
    json_mode: bool,
    invalid_json: bool = False,
    schema: dict[str, Any] | None = None,
) -> str:
    """Deterministic assistant content for (stage, last user message).

    JSON answers are a bare fenced block; markdown answers have a sentence outside the
    fence, so a client that does not extract the fence is caught by its own parser.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
    lines = [ln.strip().replace("```", "'''")[:100] for ln in prompt.splitlines() if ln.strip()]
    if json_mode:
        items = [{"id": i + 1, "text": ln} for i, ln in enumerate(lines[:3])]
        obj: Any = {"stage": stage, "items": items, "word_count": _words(prompt), "digest": digest}
        if schema is not None:  # shaped by the schema the client asked for
            obj = example_for_schema(schema, [w for ln in lines for w in ln.split()][:50])
        text = json.dumps(obj, indent=2, ensure_ascii=False)
        if invalid_json:  # drop the closing brace and leave a dangling comma
            text = text[: text.rfind("}")].rstrip() + ',\n  "items": ['
        return f"```json\n{text}\n```"
    base = stage[:-3] if stage.endswith("_MD") else stage
    title = base.replace("_", " ").strip().title() or "Document"
    bullets = "\n".join(f"- {ln}" for ln in lines[:5]) or "- (empty prompt)"
    return (
        f"Here is the {title.lower()} draft.\n\n"
        f"```markdown\n# {title}\n\n{bullets}\n\n_digest: {digest}_\n```"
    )


def _requested_schema(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema in an OpenAI (``json_schema``) or llama.cpp (``schema``) response_format."""
    if not isinstance(fmt, dict):
        return None
    inner = fmt.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else fmt.get("schema")
    return schema if isinstance(schema, dict) else None


def parse_chat(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """Validate just enough of a chat request to answer; returns (body, error message)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return {}, "request body is not valid JSON"
    if not isinstance(body, dict):
        return {}, "request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return {}, "'messages' must be a non-empty list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            return {}, f"messages[{i}] must be an object with a string 'role'"
    return body, None


def completion_body(
    stage: str, body: dict[str, Any], fault: Fault | None, request_id: int
) -> dict[str, Any]:
    """The ``chat.completion`` object for a parsed request, with content faults applied."""
    messages: list[dict[str, Any]] = body["messages"]
    users = [m for m in messages if m.get("role") == "user"]
    prompt = _text_of(users[-1].get("content")) if users else ""
    fmt = body.get("response_format")
    json_mode = stage.endswith("_JSON") or (
        isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    )
    content = render_content(
        stage,
        prompt,
        json_mode=json_mode,
        invalid_json=bool(fault and fault.invalid_json),
        schema=_requested_schema(fmt),
    )
    finish = "stop"
    if fault is not None and fault.truncate:
        content, finish = content[: max(1, len(content) // 2)], "length"
    prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in messages)
    completion_tokens = _words(content)
    model = body.get("model")
    return {
        "id": f"chatcmpl-sim-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model if isinstance(model, str) and model else MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
