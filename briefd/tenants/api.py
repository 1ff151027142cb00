"""The HTTP API's side of tenants: who calls (the guard), which job an id names, and the
answers mapped back, so :mod:`briefd.daemon.http_api` only wires these in.

A path's id is turned into the internal key of the caller's tenant
(:func:`job_key`): a tenant's key can only ever name its own tenant's jobs, so
another tenant's job is "no such job" (404), never "forbidden" (which would
say it exists). An ``admin`` key may also name any job by its full key
(``acme.acme-q3``). Answers show a job of the caller's own tenant by its bare
id, any other (an admin's view) by its full key, with ``tenant`` set.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import Scope

from briefd.messages import JOB_ID_PATTERN, JobInfo, JobResult, JobSpec
from briefd.tenants.auth import BUILTIN, PRINCIPAL, Authenticator, Principal, Refusal
from briefd.tenants.ids import DEFAULT_TENANT, internal_id, parse_key, split_id
from briefd.tenants.keys import key_id_of

_JOB_ID = re.compile(JOB_ID_PATTERN)


async def authenticate(auth: Authenticator, scope: Scope, headers: Headers) -> Refusal | None:
    """Set ``scope[PRINCIPAL]`` from the bearer, or say why not (401, 403, 429, 503).

    An address over its failed attempts is refused (429) before anything is compared,
    except for a well-formed API key, which is still checked: its 256 random bits cannot
    be guessed however fast one tries, and so the tenants behind one proxy address keep
    working while someone there fails; a guess refused meanwhile is not logged again. The
    token file, which an operator may have written by hand, gets no such pass.
    """
    client = scope.get("client")
    address = str(client[0]) if client else "unknown"
    bearer, _, given = headers.get("authorization", "").partition(" ")
    given = given.strip() if bearer.lower() == "bearer" else ""
    locked = auth.locked_out(address)
    if locked is not None and not is_api_key(given):
        return locked
    principal = None
    if given:
        principal = auth.cached(given) if locked is None else auth.cached_key(given)
        if principal is None:
            principal = await run_in_threadpool(auth.verify, given, builtin=locked is None)
    if principal is None:
        return locked or auth.failed(address, given)
    scope[PRINCIPAL] = principal
    return auth.admit(principal, scope.get("method", "GET"), scope["path"])


def is_api_key(given: str) -> bool:
    return key_id_of(given) is not None


def principal_of(scope: Scope) -> Principal:
    """The caller (the built-in admin for an app without the guard, as in-process tests)."""
    found = scope.get(PRINCIPAL)
    return found if isinstance(found, Principal) else BUILTIN


def job_key(scope: Scope, given: str) -> str | None:
    """The internal key ``given`` names for this caller, or None (answer 404)."""
    p = principal_of(scope)
    if _JOB_ID.match(given):
        return internal_id(p.tenant, given)
    if p.admin:
        return parse_key(given)
    return None


def shown(scope: Scope, key: str) -> str:
    """A key as this caller sees it: bare for its own tenant's job, else the full key."""
    tenant, job_id = split_id(key)
    return job_id if tenant == principal_of(scope).tenant else key


def present_info(scope: Scope, info: JobInfo) -> dict[str, Any]:
    tenant = split_id(info.job_id)[0]
    body = info.model_copy(update={"job_id": shown(scope, info.job_id), "tenant": tenant})
    return body.model_dump(mode="json")


def present_result(scope: Scope, result: JobResult) -> dict[str, Any]:
    body = result.model_dump(mode="json")
    body["job_id"] = shown(scope, result.job_id)
    return body


def body_tenant(scope: Scope, data: Any) -> tuple[str, str] | None:
    """Take a ``tenant`` out of a submitted body: ``(field, message)`` if it names another
    tenant than the caller's (the daemon sets it from the key)."""
    p = principal_of(scope)
    given = data.pop("tenant", None) if isinstance(data, dict) else None
    if given is not None and given != p.tenant:
        return "tenant", f"tenant: {given!r}: this key submits for tenant {p.tenant!r} only"
    return None


def own_job(scope: Scope, job: JobSpec) -> JobSpec | tuple[str, str]:
    """The job as the caller's tenant's (its internal key and tenant), or ``(field, message)``:
    a client-given id may not contain a dot."""
    p = principal_of(scope)
    if not _JOB_ID.match(job.job_id):
        return "job_id", f"job_id: {job.job_id!r}: letters, digits, '_' and '-' only"
    return job.model_copy(update={"tenant": p.tenant, "job_id": internal_id(p.tenant, job.job_id)})


def shown_event(viewer: str, key: str, data: str) -> str:
    """An event's JSON (``data``, of job ``key``) as a caller of tenant ``viewer`` sees it: its
    ``job_id`` bare when the job is the viewer's own, as :func:`shown` shows ids everywhere
    else (the full key otherwise: an admin's view of another tenant's job).

    ``data`` is ``event.model_dump_json()``: compact, and every streamed event's fields
    start ``type``, ``ts``, ``job_id`` (a test holds this), so the first
    ``"job_id":"<key>"`` is the event's own, never one inside a JSON document a stage
    produced; ``JobCompleted``'s ``result`` starts with its ``job_id`` too, shown as
    ``GET /v1/jobs/{id}/result`` shows it. Replacing those two rewrites the fields only,
    without parsing documents of many kilobytes once per stream. The default tenant's
    keys are bare already: the single user's stream is the stored row itself.
    """
    if viewer == DEFAULT_TENANT:
        return data
    tenant, job_id = split_id(key)
    if tenant != viewer:
        return data
    own = f'"job_id":"{job_id}"'
    data = data.replace(f'"job_id":"{key}"', own, 1)
    if data.startswith('{"type":"JobCompleted"'):
        data = data.replace(f'"result":{{"job_id":"{key}"', f'"result":{{{own}', 1)
    return data


def stream_tenant(scope: Scope) -> str | None:
    """Whose events ``GET /v1/events`` shows this caller: its tenant's, or (admin) all (None)."""
    p = principal_of(scope)
    return None if p.admin else p.tenant


def token_job(tenant: str, given: str) -> str | None:
    """The internal key a stream token's path id names, read as its issuer's tenant would
    (a bare id is that tenant's job; a full key, as an admin's URL has it, is itself)."""
    if _JOB_ID.match(given):
        return internal_id(tenant, given)
    return parse_key(given)


def key_live(store: Any, key_id: str) -> bool:
    """Whether API key ``key_id`` is in ``store`` (a
    :class:`~briefd.tenants.store.TenantStore`) and not revoked: a stream token asked by a
    key opens nothing once the key is revoked (checked when a stream opens)."""
    row = store.find_key(key_id)
    return row is not None and row.revoked_at is None
