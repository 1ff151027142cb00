"""The embedded model's threads against a busy machine: which settings avoid the stall.

llama.cpp decodes each token as a graph of operations split across ``n_threads`` threads that
meet at a barrier after each one. If another process takes a core, one decoding thread waits
for the CPU while the other spins at the barrier: on this 2-core machine a 400-token request
once took 78 s instead of 5 s. This bench runs one server per setting (threads 1 or 2, OpenMP
spinning or passive waiting, llama.cpp's poll level), and times the same requests with and
without a background process that keeps one core busy, in interleaved rounds:

    python bench/bench_local_threads.py [--rounds 5] [--tokens 128] [--only 0,3]

Printed: per setting, the median and worst time of one request alone and of two requests at
once (the two parallel stages), unloaded and loaded, and loaded / unloaded (target <= 3).

Measured here (xllamacpp 2026.10, SmolLM2-135M, 128 tokens; 2 cores shared with other
sessions, load average 4-7, so "unloaded" means without our busy process only): with OpenMP's
default spinning waits, 2 threads stalled for up to 68-88 s (poll 0 or 50 alike), even without
the busy process; with OMP_WAIT_POLICY=PASSIVE the worst loaded request was 1.2-2.8 x the
unloaded median (two runs), and 1 thread 0.8-2.1 x. Passive 2 threads is the default.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from briefd.local.model_cache import ensure_model
from briefd.local.server import OMP_ENV, LocalModelServer

HTTP = requests.Session()
HTTP.trust_env = False


@dataclass(frozen=True)
class Setting:
    name: str
    threads: int
    omp_env: dict[str, str]
    poll: int = 0


SETTINGS = (
    Setting("1 thread", 1, {}),
    Setting("2 threads, OpenMP default spin", 2, {}),
    Setting("2 threads, OpenMP spin, poll 50", 2, {}, poll=50),
    Setting("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, dict(OMP_ENV)),
)

PROMPT = "Write a short story about a lighthouse keeper and a storm."


def one(base_url: str, tokens: int) -> float:
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "ignore_eos": True,  # always exactly `tokens` tokens: the same work every time
        "temperature": 0.0,
    }
    started = time.monotonic()
    resp = HTTP.post(f"{base_url}/chat/completions", json=body, timeout=600)
    resp.raise_for_status()
    return time.monotonic() - started


def pair(base_url: str, tokens: int) -> float:
    """Two requests at once (two slots): the wall time until both are answered."""
    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(base_url, tokens)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """A child process spinning on one core (not pinned: the scheduler places it)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it take its core before the request starts
        yield
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--only", default="", help="settings by index, e.g. 0,3")
    args = parser.parse_args()
    chosen = [SETTINGS[int(i)] for i in args.only.split(",")] if args.only else SETTINGS
    model: Path = ensure_model()
    print(f"load before: {os.getloadavg()}, usable cores: {len(os.sched_getaffinity(0))}")
    servers = {
        s.name: LocalModelServer(model, n_threads=s.threads, poll=s.poll, omp_env=s.omp_env)
        for s in chosen
    }
    os.environ.pop("OMP_WAIT_POLICY", None)  # ours would override each setting's
    for server in servers.values():
        server.start()
    times: dict[tuple[str, str, bool], list[float]] = {}
    try:
        for server in servers.values():  # warm-up: first requests allocate buffers
            one(server.base_url, 16)
        for rnd in range(args.rounds):
            for loaded in (False, True):
                for name, server in servers.items():
                    with busy_core(loaded):
                        times.setdefault((name, "one", loaded), []).append(
                            one(server.base_url, args.tokens)
                        )
                        times.setdefault((name, "pair", loaded), []).append(
                            pair(server.base_url, args.tokens)
                        )
            print(f"round {rnd + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}",
                  flush=True)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{args.tokens} tokens per request, {args.rounds} rounds; "
          f"load after: {os.getloadavg()}")  # fmt: skip
    print(f"{'setting':<38} {'what':<5} {'unloaded med/max s':>19} {'loaded med/max s':>17} "
          f"{'worst loaded / unloaded med':>28}")  # fmt: skip
    for name in servers:
        for what in ("one", "pair"):
            free, busy = times[(name, what, False)], times[(name, what, True)]
            ratio = max(busy) / statistics.median(free)
            print(f"{name:<38} {what:<5} {statistics.median(free):>9.2f} / {max(free):<7.2f} "
                  f"{statistics.median(busy):>7.2f} / {max(busy):<7.2f} {ratio:>10.2f}x"
                  f"{'  (> 3x)' if ratio > 3 else ''}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
