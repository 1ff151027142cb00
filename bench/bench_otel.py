"""What OpenTelemetry costs a run: jobs through a Pipeline with OTLP export on and off.

Interleaved rounds of JOBS jobs (K=2, the simulator at scale 0 in a child process), each
round once with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a loopback collector that
takes and discards every export, once without. Printed: medians of the process's CPU
time per job (the SDK's export threads included) and of the wall time, their ratios
(on / off), and, apart, the observer's own cost per job on the publishing thread (the
events of one recorded job replayed, CPU time of the calling thread).

    .venv/bin/python bench/bench_otel.py [--rounds 5] [--jobs 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common import job, start_sim

import briefd
from briefd.config import Settings
from briefd.messages import Event


class _Discard(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def run_round(base_url: str, jobs: int, tag: str) -> tuple[float, float]:
    """CPU seconds and wall seconds of ``jobs`` jobs, open to close."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with briefd.Pipeline(Settings(base_url=base_url, max_concurrent=2)) as p:
        futures = [p.submit(job(f"{tag}-{i}")) for i in range(jobs)]
        for f in futures:
            assert f.get(timeout=300).status == "succeeded"
    return time.process_time() - cpu0, time.perf_counter() - wall0


def observer_cost(base_url: str, replays: int) -> float:
    """The observer's CPU per job on the calling thread (microseconds), replaying the
    events of one real job under fresh job ids."""
    events: list[Event] = []
    with briefd.Pipeline(Settings(base_url=base_url), observers=[events.append]) as p:
        assert p.submit(job("recorded")).get(timeout=60).status == "succeeded"
    folded = [e for e in events if getattr(e, "job_id", None) == "recorded"]
    with briefd.Pipeline(Settings(base_url=base_url)) as p:
        telemetry = p.telemetry
        assert telemetry is not None
        copies = [
            [e.model_copy(update={"job_id": f"r{i}"}) for e in folded] for i in range(replays)
        ]
        t0 = time.thread_time()
        for replay in copies:
            for event in replay:
                telemetry(event)
        spent = time.thread_time() - t0
    return spent / replays * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    child, base_url = start_sim(0.0)
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    try:
        for r in range(args.rounds):
            for enabled in (True, False) if r % 2 == 0 else (False, True):
                if enabled:
                    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
                else:
                    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                figures = run_round(base_url, args.jobs, f"r{r}{'on' if enabled else 'off'}")
                (on if enabled else off).append(figures)
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        per_job_us = observer_cost(base_url, 500)
    finally:
        child.kill()
        collector.shutdown()
    cpu_on = statistics.median(c for c, _ in on) / args.jobs * 1e3
    cpu_off = statistics.median(c for c, _ in off) / args.jobs * 1e3
    wall_on = statistics.median(w for _, w in on)
    wall_off = statistics.median(w for _, w in off)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{args.rounds} interleaved rounds of {args.jobs} jobs, K=2, simulator at scale 0")
    cpu_ratio, wall_ratio = cpu_on / cpu_off, wall_on / wall_off
    print(f"CPU per job   off {cpu_off:7.2f} ms  on {cpu_on:7.2f} ms  on/off {cpu_ratio:.2f}")
    print(f"wall / round  off {wall_off:7.2f} s   on {wall_on:7.2f} s   on/off {wall_ratio:.2f}")
    print(f"observer on the publishing thread: {per_job_us:.0f} us per job (4 stages)")


if __name__ == "__main__":
    main()
