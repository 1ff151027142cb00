"""The issue's key-check target: p99 < 1 ms added to a request with the cache of verified keys.

Run: ``python bench/bench_tenants.py [--requests 400] [--rounds 5]``.

1. In process: the authenticator's whole check of a cached key (``cached`` + ``admit``:
   a SHA-256, a dict lookup, the scope, the per-key bucket), and of a key not cached
   (its row read from the SQLite journal, its HMAC computed): p50 and p99 in microseconds.
2. Over HTTP, against a real ``briefd serve`` (SQLite) and the in-process simulator:
   ``GET /v1/jobs/<unknown>`` (a 404 after a journal read) with the token file (the
   built-in key: a constant-time compare) and with a tenant's API key, in interleaved
   rounds; the medians of each round's p50 and p99, and the difference: what a key adds.
3. A revoked key: seconds from ``briefd key revoke`` to the daemon's first 401.

Then the load average, which the figures depend on (2 cores shared with other work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_helpers import HTTP, Daemon, wait_for

from briefd.config import Settings, load_pipeline
from briefd.sim.server import SimProfile, SimServer
from briefd.store import open_store
from briefd.tenants.auth import Authenticator
from briefd.tenants.store import Tenant, TenantStore


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def in_process(n: int, tmp: Path) -> None:
    settings = Settings(data_dir=tmp / "inproc")
    journal = open_store(settings, load_pipeline())
    store = TenantStore(settings)
    store.put_tenant(Tenant("acme"))
    tokens = [store.create_key("acme", ("read",)).token for _ in range(n)]
    auth = Authenticator("the-token-file", store, cache_s=5.0, rate_per_s=0)
    cold, warm = [], []
    for token in tokens:
        t0 = time.perf_counter()
        principal = auth.cached(token) or auth.verify(token)
        cold.append((time.perf_counter() - t0) * 1e6)
        assert principal is not None
        t0 = time.perf_counter()
        principal = auth.cached(token)
        assert principal is not None and auth.admit(principal, "GET", "/v1/jobs") is None
        warm.append((time.perf_counter() - t0) * 1e6)
    print(f"in process, cached key:  p50 {_pct(warm, 0.5):7.1f} us  p99 {_pct(warm, 0.99):7.1f} us")
    print(f"in process, cache miss:  p50 {_pct(cold, 0.5):7.1f} us  p99 {_pct(cold, 0.99):7.1f} us")
    store.close()
    journal.close()


def _cli(d: Daemon, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "briefd", *args], env=d.env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return done.stdout.strip()


def _latencies(d: Daemon, key: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = HTTP.get(f"{d.url}/v1/jobs/none-{i}", headers=headers, timeout=10)
        out.append((time.perf_counter() - t0) * 1e3)
        assert r.status_code == 404, r.text
    return out


def over_http(n: int, rounds: int, tmp: Path) -> None:
    with SimServer(SimProfile(scale=0.01)) as sim:
        d = Daemon(tmp / "daemon", sim.base_url, api_rate_per_key=0)
        d.tmp.mkdir()
        _cli(d, "tenant", "add", "acme")
        key = _cli(d, "key", "create", "acme", "--scopes", "read")
        d.start()
        try:
            _latencies(d, key, 20)  # warm both paths
            _latencies(d, d.token, 20)
            rows: dict[str, list[tuple[float, float]]] = {"token file": [], "API key": []}
            for _ in range(rounds):
                for name, k in (("token file", d.token), ("API key", key)):
                    lat = _latencies(d, k, n)
                    rows[name].append((_pct(lat, 0.5), _pct(lat, 0.99)))
            med = {
                name: (statistics.median(p for p, _ in v), statistics.median(q for _, q in v))
                for name, v in rows.items()
            }
            for name, (p50, p99) in med.items():
                print(f"HTTP 404, {name:<10}:  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
            added50 = med["API key"][0] - med["token file"][0]
            added99 = med["API key"][1] - med["token file"][1]
            print(
                f"added by a key (medians of {rounds} rounds): p50 {added50:+.3f} ms, "
                f"p99 {added99:+.3f} ms"
            )
            key_id = key.split("_")[1]
            _cli(d, "key", "revoke", key_id)
            t0 = time.monotonic()
            refused = wait_for(
                lambda: (
                    HTTP.get(
                        f"{d.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10
                    ).status_code
                    == 401
                ),
                10,
                0.02,
            )
            print(
                f"revoked key refused after {time.monotonic() - t0:.2f} s "
                f"(key_cache_s {Settings().key_cache_s:g}){'' if refused else ' NOT REFUSED'}"
            )
        finally:
            d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        in_process(args.requests, Path(tmp))
        over_http(args.requests, args.rounds, Path(tmp))
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores)")


if __name__ == "__main__":
    main()
