"""Tenants: several teams sharing one daemon (or cluster), each with its own keys and budget.

* :mod:`~briefd.tenants.ids`: a job's internal key (``tenant.job_id``; bare for ``default``);
* :mod:`~briefd.tenants.keys`: API keys (made, hashed, checked in constant time);
* :mod:`~briefd.tenants.store`: tenants and keys in the journal's database (SQLite or
  PostgreSQL, so every daemon of a cluster knows them), and the per-tenant job queries;
* :mod:`~briefd.tenants.auth`: the HTTP API's bearer check, cache, scopes and abuse limits;
* :mod:`~briefd.tenants.gate`: per-tenant daily budgets and queue caps in admission;
* :mod:`~briefd.tenants.cli`: ``briefd tenant`` and ``briefd key``.

docs/tenants.md describes the model.
"""
