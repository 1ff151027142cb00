"""``briefd tenant add|list`` and ``briefd key create|list|revoke``: the tenants' admin commands.

They work on the journal's database as ``briefd serve`` finds it (``--config``,
``BRIEFD_DATA_DIR`` or ``BRIEFD_DATABASE_URL``), whether or not a daemon is
running: a daemon reads tenants every few seconds and checks keys against the
database (a revoked key is refused within ``key_cache_s``, at most 5 s). A new
key is printed once on stdout; only its HMAC is stored. Bad input: one line on
stderr, exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from briefd.config import ConfigError, Settings
from briefd.store.base import StoreUnavailable
from briefd.tenants.ids import valid_tenant
from briefd.tenants.keys import SCOPES, parse_scopes
from briefd.tenants.store import Tenant, TenantStore

EXIT_OK, EXIT_FAILED = 0, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (through the CLI)
        raise ConfigError(f"{self.prog.removeprefix('briefd ')}: {message}")


def _parser(name: str, description: str) -> tuple[_Parser, Any]:
    parser = _Parser(prog=f"briefd {name}", description=description)
    sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    return parser, sub


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="settings TOML file (else $BRIEFD_CONFIG)")


def _store(args: argparse.Namespace) -> TenantStore:
    env = os.environ.get("BRIEFD_CONFIG")
    return TenantStore(Settings.load(args.config or (Path(env) if env else None)))


def _with_store(args: argparse.Namespace, work: Callable[[TenantStore], int]) -> int:
    """``work`` on the store of ``args``, closed after; a database out of reach is one line
    on stderr and exit 1 (not a traceback)."""
    store = _store(args)
    try:
        return work(store)
    except StoreUnavailable as err:
        print(f"briefd: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()


def _number(name: str, kind: type[float] | type[int], *, zero: bool) -> Any:
    """An argparse type: a finite number above 0 (or at least 0 with ``zero``)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            least = "at least 0" if zero else "above 0"
            raise argparse.ArgumentTypeError(f"{name}: must be {least}: {text!r}")
        return value

    return parse


def tenant_main(argv: list[str]) -> int:
    parser, sub = _parser(
        "tenant",
        "Add, change or list the tenants sharing this daemon or cluster: each one's weight "
        "in the fair share, daily budget and queue cap (docs/tenants.md).",
    )
    add = sub.add_parser("add", help="create a tenant, or change an existing one's settings")
    add.add_argument("name", help="lower-case letters, digits, '_' and '-' (at most 32)")
    add.add_argument("--weight", type=_number("--weight", float, zero=False), default=1.0)
    add.add_argument("--daily-budget-usd", type=_number("--daily-budget-usd", float, zero=True))
    add.add_argument("--max-queued", type=_number("--max-queued", int, zero=True))
    _config(add)
    lst = sub.add_parser("list", help="the tenants and their settings")
    _config(lst)
    args = parser.parse_args(argv)
    if args.action == "add" and not valid_tenant(args.name):
        raise ConfigError(
            f"tenant {args.name!r}: lower-case letters, digits, '_' and '-', 1 to 32 characters"
        )
    return _with_store(args, lambda store: _tenant(args, store))


def _tenant(args: argparse.Namespace, store: TenantStore) -> int:
    if args.action == "add":
        tenant = Tenant(args.name, args.weight, args.daily_budget_usd, args.max_queued)
        new = store.put_tenant(tenant)
        print(f"tenant {args.name} {'added' if new else 'updated'}")
        return EXIT_OK
    print(f"{'TENANT':<24} {'WEIGHT':>7} {'BUDGET/DAY':>11} {'MAX QUEUED':>10}")
    for t in store.tenants().values():
        budget = f"${t.daily_budget_usd:g}" if t.daily_budget_usd is not None else "-"
        queued = str(t.max_queued) if t.max_queued is not None else "-"
        print(f"{t.name:<24} {t.weight:>7g} {budget:>11} {queued:>10}")
    return EXIT_OK


def key_main(argv: list[str]) -> int:
    parser, sub = _parser(
        "key",
        "Create, list or revoke the tenants' API keys; a new key is printed once and only "
        "its HMAC is kept (docs/tenants.md).",
    )
    create = sub.add_parser("create", help="a new key for TENANT, printed once")
    create.add_argument("tenant")
    create.add_argument(
        "--scopes", default="submit,read", help=f"comma-separated, of {','.join(SCOPES)}"
    )
    _config(create)
    lst = sub.add_parser("list", help="the keys (ids, tenants, scopes; never the keys)")
    _config(lst)
    revoke = sub.add_parser("revoke", help="refuse a key from now on (every daemon within 5 s)")
    revoke.add_argument("key_id")
    _config(revoke)
    args = parser.parse_args(argv)
    scopes: tuple[str, ...] = ()
    if args.action == "create":
        try:
            scopes = parse_scopes(args.scopes)
        except ValueError as err:
            raise ConfigError(f"key create: {err}") from None
    return _with_store(args, lambda store: _key(args, scopes, store))


def _key(args: argparse.Namespace, scopes: tuple[str, ...], store: TenantStore) -> int:
    if args.action == "create":
        made = store.create_key(args.tenant, scopes)
        print(made.token)
        print(
            f"key {made.key_id} for tenant {args.tenant} ({','.join(scopes)}): "
            "shown once, keep it secret",
            file=sys.stderr,
        )
        return EXIT_OK
    if args.action == "revoke":
        if not store.revoke_key(args.key_id):
            raise ConfigError(f"key {args.key_id}: no such live key (briefd key list)")
        print(f"key {args.key_id} revoked")
        return EXIT_OK
    print(f"{'KEY':<13} {'TENANT':<24} {'SCOPES':<26} {'CREATED':<20} REVOKED")
    for k in store.list_keys():
        revoked = _when(k.revoked_at) if k.revoked_at is not None else "-"
        scopes_text, created = ",".join(k.scopes), _when(k.created_at)
        print(f"{k.key_id:<13} {k.tenant:<24} {scopes_text:<26} {created:<20} {revoked}")
    return EXIT_OK


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
