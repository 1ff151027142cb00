"""What the tenant tests do to a real ``briefd serve``: make keys and call with them.

Shared by ``tests/tenants`` and ``tests/cluster/test_cluster_tenants`` (which imports it as
``tenants.helpers``); the daemon itself is :class:`daemon_helpers.Daemon`.
"""

from __future__ import annotations

from typing import Any

import requests
from daemon_helpers import HTTP, Daemon


def new_key(d: Daemon, tenant: str, scopes: str = "submit,read,cancel") -> str:
    """A new API key of ``tenant`` with ``scopes``, made by ``briefd key create``."""
    return d.cli("key", "create", tenant, "--scopes", scopes).strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(d: Daemon, key: str, method: str, path: str, body: Any = None) -> requests.Response:
    """``method path`` on ``d`` with ``key``, ``body`` as JSON."""
    return HTTP.request(method, f"{d.url}{path}", json=body, headers=bearer(key), timeout=10)
