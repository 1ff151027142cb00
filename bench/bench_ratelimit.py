"""Rate-limit benchmark: goodput against a server that answers 429 above R requests a second.

The fake server (127.0.0.1, a thread per connection) admits at most ``R``
requests in any sliding second. Above that it answers 429 with the headers
OpenAI-compatible servers send (``retry-after-ms``, ``retry-after``,
``x-ratelimit-remaining-requests: 0``, ``x-ratelimit-reset-requests`` as a
duration). A request that arrives more than :data:`SLACK_S` after a 429 was
sent and before the time that 429 named is counted as a *violation*: the
client called before the ``Retry-After`` had passed.

briefd runs a batch of jobs through one ``Pipeline`` with a ceiling of
``--ceiling`` tokens (far above what R allows), the adaptive window on. It
prints, second by second, goodput / R, then the 429s, violations, failed jobs
and the first second from which goodput held at >= 0.9 R::

    .venv/bin/python bench/bench_ratelimit.py --rate 20 --jobs 60
"""

from __future__ import annotations

import argparse
import json
import os
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
            self.last_429_at = now
            self.not_before = max(self.not_before, now + wait)
            return wait

    def served(self) -> None:
        with self.lock:
            self.ok_by_second[int(time.monotonic() - self.t0)] += 1


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
                self._send(
                    429,
                    {"error": {"message": "rate limit reached", "type": "requests"}},
                    {
                        "retry-after-ms": str(ms),
                        "retry-after": str(max(1, round(wait))),
                        "x-ratelimit-limit-requests": str(ledger.rate),
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{ms}ms",
                    },
                )
                return
            threading.Event().wait(latency_s)  # the model "generating": a server-side delay
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
            self._send(200, answer, {})

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=20, help="R: requests the server allows a second")
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--ceiling", type=int, default=16, help="BRIEFD_MAX_CONCURRENT")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per answer")
    args = ap.parse_args(argv)
    ledger = Ledger(args.rate)
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
    failed = sum(r.status is not JobStatus.SUCCEEDED for r in results)
    seconds = int(elapsed)
    print(f"load {load:.2f} (1-min) on {os.cpu_count()} cores; R={args.rate}/s, "
          f"ceiling {args.ceiling}, {args.jobs} jobs ({args.jobs * 4} calls), "
          f"{args.latency * 1000:.0f} ms per answer")  # fmt: skip
    print("second  goodput/R")
    first_at_r = None
    for s in range(seconds):
        ratio = ledger.ok_by_second[s] / args.rate
        print(f"{s:6d}  {ratio:8.2f}  {'#' * round(ratio * 20)}")
        if ratio >= 0.9 and first_at_r is None:
            first_at_r = s
    body = [ledger.ok_by_second[s] / args.rate for s in range(seconds - 2)]  # not the tail
    held = sum(r >= 0.9 for r in body) / len(body) if body else 0.0
    total_ok = sum(ledger.ok_by_second.values())
    print(f"elapsed {elapsed:.1f} s; mean goodput {total_ok / elapsed / args.rate:.2f} R")
    print(f"429s answered: {ledger.refused}; calls before their Retry-After: {ledger.violations}")
    if ledger.early:
        lateness = sorted(round(a * 1000) for a, _ in ledger.early)
        print(f"  arrived this many ms after the 429 left the server: {lateness}")
        worst = max(ledger.early, key=lambda e: e[1])
        print(
            f"  earliest: {worst[1] * 1000:.0f} ms before the Retry-After, "
            f"{worst[0] * 1000:.0f} ms after the 429 left the server"
        )
    print(f"jobs failed: {failed} of {args.jobs}")
    print(f"first second at >= 0.9 R: {first_at_r}; seconds at >= 0.9 R (tail excluded): "
          f"{held:.0%}")  # fmt: skip
    print(f"limiter at the end: window {stats.window:.2f}, 429/503 seen {stats.rate_limited_total}")
    return 0 if failed == 0 and ledger.violations == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
