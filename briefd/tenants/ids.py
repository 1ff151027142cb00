"""A job's internal key: how two tenants may both submit ``acme-q3`` without meeting.

Every layer keyed by ``job_id`` (journal rows, output folders, the event log,
limiter requests, webhooks, event streams) uses the *internal* key, so tenants
are kept apart everywhere by construction rather than by a check in each layer:

* the ``default`` tenant's jobs keep their bare id (``acme-q3``): nothing changes
  for a single user, an existing journal, or the token file;
* another tenant's job is ``<tenant>.<id>`` (``acme.acme-q3``). A client-given id
  may not contain a dot (:data:`~briefd.messages.JOB_ID_PATTERN`) and a tenant
  name neither, so the split is unambiguous and no client can name another
  tenant's key.

The HTTP API maps a request's id to the key of its caller's tenant and back in
its answers (:mod:`briefd.tenants.api`); an ``admin`` key addresses another
tenant's job by its full key.
"""

from __future__ import annotations

import re

from briefd.messages import JOB_ID_PATTERN, TENANT_PATTERN

DEFAULT_TENANT = "default"
SEPARATOR = "."
_TENANT = re.compile(TENANT_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)


def valid_tenant(name: str) -> bool:
    """Whether ``name`` is a tenant's name: lower-case letters, digits, ``_`` and ``-``."""
    return bool(_TENANT.match(name))


def internal_id(tenant: str, job_id: str) -> str:
    """The key the daemon stores and runs ``job_id`` of ``tenant`` under."""
    return job_id if tenant == DEFAULT_TENANT else f"{tenant}{SEPARATOR}{job_id}"


def split_id(key: str) -> tuple[str, str]:
    """``(tenant, job_id)`` of an internal key."""
    tenant, dot, rest = key.partition(SEPARATOR)
    return (tenant, rest) if dot else (DEFAULT_TENANT, key)


def tenant_of(key: str) -> str:
    """The tenant whose job ``key`` is."""
    return split_id(key)[0]


def parse_key(given: str) -> str | None:
    """``given`` as an internal key (an admin's path), or None if it is not one."""
    tenant, job_id = split_id(given)
    if not _JOB_ID.match(job_id) or (tenant != DEFAULT_TENANT and not valid_tenant(tenant)):
        return None
    if SEPARATOR in given and tenant == DEFAULT_TENANT:
        return None
    return given
