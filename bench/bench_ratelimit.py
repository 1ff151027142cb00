"""Rate-limit benchmark: goodput against a server that answers 429 above R requests a second.

The fake server (127.0.0.1, a thread per connection) admits at most ``R``
requests in any sliding second. Above that it answers 429 with the headers
OpenAI-compatible servers send (``retry-after-ms``, ``retry-after``,
``x-ratelimit-remaining-requests: 0``, ``x-ratelimit-reset-requests`` as a
duration). A request that arrives more than :data:`SLACK_S` after a 429 was
sent and before the time that 429 named is counted as a *violation*: the
client called before the ``Retry-After`` had passed.

With ``--burst B`` the server is a token bucket instead: B requests at once,
refilled at R a second, and *every* answer carries ``x-ratelimit-limit-requests``
(B), ``-remaining-requests`` (whole requests left) and ``-reset-requests``
(until the bucket is full again, in ms, as OpenAI writes it), read as the call
was admitted, and the same for
tokens (a bucket of 1,000,000 refilled in a minute, charged 15 per call); a 429
adds ``retry-after-ms`` and ``retry-after`` (until one request is back). No
``BRIEFD_RPM`` is set: what briefd knows of the budget it learns from those
headers. The figures are goodput after ``--warmup`` seconds (tail excluded, as a
fraction of R) and the share of requests answered 429.

``--compare OLD_TREE --rounds N`` runs the same bench N times each against the
code in ``OLD_TREE`` (a checkout of the commit to compare with, put first on
``PYTHONPATH``) and this tree, interleaved (old, new, old, new, ...), each in its
own process, and prints every round and the medians::

    git archive main | tar -x -C /tmp/before
    .venv/bin/python bench/bench_ratelimit.py --burst 2 --rate 10 --jobs 40 --ceiling 16 \
        --compare /tmp/before --rounds 5

briefd runs a batch of jobs through one ``Pipeline`` with a ceiling of
``--ceiling`` tokens (far above what R allows), the adaptive window on. It
prints, second by second, goodput / R, then the 429s, violations, failed jobs
and the first second from which goodput held at >= 0.9 R::

    .venv/bin/python bench/bench_ratelimit.py --rate 20 --jobs 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import briefd
from briefd.config import Settings
from briefd.messages import JobStatus

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
SLACK_S = 0.1
"""A request the client granted before it had read the 429 is no violation: it arrives within
tens of ms of the 429 on a loaded 2-core machine. One that arrives later than this, and before
the time the 429 named, is: the client had heard and called anyway."""


class Ledger:
    """The server's view: a sliding second of admitted requests, 429s and violations."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.admitted: deque[float] = deque()
        self.ok_by_second: Counter[int] = Counter()
        self.refused_by_second: Counter[int] = Counter()
        self.refused = 0
        self.violations = 0
        self.early: list[tuple[float, float]] = []  # (after the 429, before its time)
        self.t0 = time.monotonic()
        self.last_429_at = -1.0
        self.not_before = -1.0

    def take(self) -> float | None:
        """None to serve now, else seconds until a slot frees (the 429's Retry-After)."""
        now = time.monotonic()
        with self.lock:
            if self.last_429_at + SLACK_S < now < self.not_before - 0.005:
                self.violations += 1
                self.early.append((now - self.last_429_at, self.not_before - now))
            while self.admitted and now - self.admitted[0] >= 1.0:
                self.admitted.popleft()
            if len(self.admitted) < self.rate:
                self.admitted.append(now)
                return None
            wait = 1.0 - (now - self.admitted[0])
            self.refused += 1
            self.refused_by_second[int(now - self.t0)] += 1
            self.last_429_at = now
            self.not_before = max(self.not_before, now + wait)
            return wait

    def served(self) -> None:
        with self.lock:
            self.ok_by_second[int(time.monotonic() - self.t0)] += 1


class Bucket(Ledger):
    """A token bucket of ``burst`` requests refilled at ``rate`` a second, with a tokens bucket
    beside it; :meth:`answer` gives the rate headers of every answer."""

    TOKENS = 1_000_000  # the tokens bucket: full in a minute
    TOKENS_PER_CALL = 15  # what the fake answers' usage says

    def __init__(self, rate: int, burst: int) -> None:
        super().__init__(rate)
        self.burst = burst
        self.level, self.tokens, self.at = float(burst), float(self.TOKENS), time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.tokens = min(self.TOKENS, self.tokens + (now - self.at) * self.TOKENS / 60.0)
        self.at = now

    def take(self) -> float | None:
        now = time.monotonic()
        with self.lock:
            if self.last_429_at + SLACK_S < now < self.not_before - 0.005:
                self.violations += 1
                self.early.append((now - self.last_429_at, self.not_before - now))
            self._refill(now)
            if self.level >= 1.0:
                self.level -= 1.0
                self.tokens = max(0.0, self.tokens - self.TOKENS_PER_CALL)
                return None
            wait = (1.0 - self.level) / self.rate
            self.refused += 1
            self.refused_by_second[int(now - self.t0)] += 1
            self.last_429_at = now
            self.not_before = max(self.not_before, now + wait)
            return wait

    def answer(self) -> dict[str, str]:
        """The x-ratelimit-* headers as of now."""
        with self.lock:
            self._refill(time.monotonic())
            full_in = (self.burst - self.level) / self.rate
            tokens_full_in = (self.TOKENS - self.tokens) / (self.TOKENS / 60.0)
            return {
                "x-ratelimit-limit-requests": str(self.burst),
                "x-ratelimit-remaining-requests": str(math.floor(self.level)),
                "x-ratelimit-reset-requests": f"{round(full_in * 1000)}ms",
                "x-ratelimit-limit-tokens": str(self.TOKENS),
                "x-ratelimit-remaining-tokens": str(math.floor(self.tokens)),
                "x-ratelimit-reset-tokens": f"{round(tokens_full_in * 1000)}ms",
            }


def make_handler(ledger: Ledger, latency_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            wait = ledger.take()
            if wait is not None:
                ms = max(1, round(wait * 1000))
                headers = {
                    "x-ratelimit-limit-requests": str(ledger.rate),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{ms}ms",
                }
                if isinstance(ledger, Bucket):
                    headers = ledger.answer()
                headers.update({"retry-after-ms": str(ms), "retry-after": str(max(1, round(wait)))})
                self._send(
                    429, {"error": {"message": "rate limit reached", "type": "requests"}}, headers
                )
                return
            # The bucket as it admitted the call (as OpenAI's headers say it), then the model
            # "generating": a server-side delay.
            rate_headers = ledger.answer() if isinstance(ledger, Bucket) else {}
            threading.Event().wait(latency_s)
            request = json.loads(body or b"{}")
            json_stage = "response_format" in request
            text = '```json\n{"ok": true}\n```' if json_stage else "```markdown\n# ok\n```"
            answer = {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }  # fmt: skip
            ledger.served()
            self._send(200, answer, rate_headers)

        def _send(self, status: int, obj: Any, headers: dict[str, str]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``args.jobs`` jobs against a fresh fake server: its figures."""
    ledger = Bucket(args.rate, args.burst) if args.burst else Ledger(args.rate)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(ledger, args.latency))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    settings = Settings(
        base_url=url,
        max_concurrent=args.ceiling,
        max_retries=3,
        backoff_initial_s=0.05,
        backoff_max_s=1.0,
        timeout_ms=10_000,
    )
    load = os.getloadavg()[0]
    start = time.monotonic()
    ledger.t0 = start
    with briefd.Pipeline(settings) as pipeline:
        futures = [
            pipeline.submit({"job_id": f"rl-{i:03d}", "prompts": {s: f"{s} {i}" for s in STAGES}})
            for i in range(args.jobs)
        ]
        results = [f.get(timeout=600) for f in futures]
        stats = pipeline.limiter_stats()
    elapsed = time.monotonic() - start
    server.shutdown()
    seconds = int(elapsed)
    per_second = [ledger.ok_by_second[s] for s in range(seconds)]
    body = per_second[args.warmup : max(args.warmup, seconds - 2)]  # not the tail
    served = sum(ledger.ok_by_second.values())
    return {
        "load": load,
        "elapsed_s": elapsed,
        "per_second": per_second,
        "goodput_r": statistics.mean(body) / args.rate if body else 0.0,
        "mean_goodput_r": served / elapsed / args.rate,
        "served": served,
        "refused": ledger.refused,
        "refused_share": ledger.refused / max(1, served + ledger.refused),
        "refused_after_warmup": sum(
            n for s, n in ledger.refused_by_second.items() if s >= args.warmup
        ),
        "violations": ledger.violations,
        "early": ledger.early,
        "failed": sum(r.status is not JobStatus.SUCCEEDED for r in results),
        "window": stats.window,
        "rate_limited_total": stats.rate_limited_total,
        "learned_rpm": getattr(stats, "endpoints", {}).get("", None) and stats.endpoints[""].rpm,  # type: ignore[attr-defined]
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    """The run second by second, then its figures."""
    print(f"load {r['load']:.2f} (1-min) on {os.cpu_count()} cores; R={args.rate}/s, "
          f"{'burst ' + str(args.burst) + ', ' if args.burst else ''}"
          f"ceiling {args.ceiling}, {args.jobs} jobs ({args.jobs * 4} calls), "
          f"{args.latency * 1000:.0f} ms per answer")  # fmt: skip
    print("second  goodput/R")
    first_at_r = None
    for s, ok in enumerate(r["per_second"]):
        ratio = ok / args.rate
        print(f"{s:6d}  {ratio:8.2f}  {'#' * round(ratio * 20)}")
        if ratio >= 0.9 and first_at_r is None:
            first_at_r = s
    print(f"elapsed {r['elapsed_s']:.1f} s; mean goodput {r['mean_goodput_r']:.2f} R; "
          f"after {args.warmup} s (tail excluded) {r['goodput_r']:.2f} R")  # fmt: skip
    print(f"429s answered: {r['refused']} ({r['refused_share']:.1%} of requests), "
          f"{r['refused_after_warmup']} after {args.warmup} s; "
          f"calls before their Retry-After: {r['violations']}")  # fmt: skip
    if r["early"]:
        lateness = sorted(round(a * 1000) for a, _ in r["early"])
        print(f"  arrived this many ms after the 429 left the server: {lateness}")
        worst = max(r["early"], key=lambda e: e[1])
        print(
            f"  earliest: {worst[1] * 1000:.0f} ms before the Retry-After, "
            f"{worst[0] * 1000:.0f} ms after the 429 left the server"
        )
    print(f"jobs failed: {r['failed']} of {args.jobs}")
    print(f"first second at >= 0.9 R: {first_at_r}")
    learned = f", learned {r['learned_rpm']:.0f} RPM" if r["learned_rpm"] else ""
    print(f"limiter at the end: window {r['window']:.2f}, 429/503 seen "
          f"{r['rate_limited_total']}{learned}")  # fmt: skip


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Interleaved rounds, each in its own process: the old tree's code, then this one's."""
    own = [a for a in argv if a not in ("--compare", args.compare, "--rounds", str(args.rounds))]
    cmd = [sys.executable, __file__, *own, "--json"]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    figures: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for n in range(args.rounds):
        for name, tree in (("before", args.compare), ("after", here)):
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            figures[name].append(r)
            print(f"round {n + 1} {name:6s}: goodput {r['goodput_r']:.2f} R, "
                  f"429s {r['refused_share']:5.1%} ({r['refused']}, "
                  f"{r.get('refused_after_warmup')} after {args.warmup} s), elapsed "
                  f"{r['elapsed_s']:.1f} s, failed {r['failed']}, violations "
                  f"{r['violations']}, load {r['load']:.2f}", flush=True)  # fmt: skip
    print(f"{args.rounds} interleaved rounds; R={args.rate}/s, burst {args.burst}, "
          f"{args.jobs} jobs, ceiling {args.ceiling}, {args.latency * 1000:.0f} ms per answer, "
          f"{os.cpu_count()} cores")  # fmt: skip
    for name, rs in figures.items():
        print(f"median {name:6s}: goodput after {args.warmup} s "
              f"{statistics.median(r['goodput_r'] for r in rs):.2f} R, 429s "
              f"{statistics.median(r['refused_share'] for r in rs):.1%}, elapsed "
              f"{statistics.median(r['elapsed_s'] for r in rs):.1f} s, load "
              f"{statistics.median(r['load'] for r in rs):.2f}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=20, help="R: requests the server allows a second")
    ap.add_argument("--burst", type=int, default=0, help="a token bucket of this many (0: none)")
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--ceiling", type=int, default=16, help="BRIEFD_MAX_CONCURRENT")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per answer")
    ap.add_argument("--warmup", type=int, default=3, help="seconds left out of the goodput")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    ap.add_argument("--compare", metavar="OLD_TREE", help="also run the code in OLD_TREE")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds with --compare")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args, sys.argv[1:] if argv is None else argv)
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        report(args, r)
    return 0 if r["failed"] == 0 and r["violations"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
