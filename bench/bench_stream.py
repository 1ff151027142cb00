"""Streaming and hedging, each against its reference in the same run.

    python bench/bench_stream.py [--rounds 5] [--calls 200] [--jobs 100]

1. Client CPU per call: the same stage's answer read streamed (SSE, a chunk a word, with
   a StageProgress reporter) and whole, by briefd's ``ChatClient`` against the simulator
   in a child process (``time.process_time()`` is then the client's alone). Target:
   streamed <= 1.3 x whole.
   The simulator writes a chunk a token (as real servers do), so a streamed call wakes
   and reads once a token: its context switches per call are printed beside.
2. Makespan of 100 jobs at K=2, streamed and not (``BRIEFD_STREAM``). Target: unchanged
   within noise.
3. Hedging: 5 % of stage calls wait ``--straggler-s`` for their first token (chosen with
   the same seed for both variants); jobs arrive one every ``--gap-ms`` at K=16. p99 job
   latency with ``BRIEFD_HEDGE_AFTER_MS`` and without, and the extra calls hedging sent.
   Targets: p99 <= 0.6 x without, extra calls <= 10 %.

Each part runs its variants in the same round in alternating order; figures are medians
over rounds; the load average is printed before and after. Targets are printed beside the
figures, not enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import time
import urllib.request
from typing import Any

from common import STAGES, run_jobs, start_sim
from loguru import logger

import briefd
from briefd.actors.stage_progress import ProgressReporter
from briefd.config import load_pipeline
from briefd.llm.call import ChatClient, build_request
from briefd.llm.hedge import BUDGET
from briefd.messages import Event


def _post(root: str, path: str, body: Any) -> None:
    req = urllib.request.Request(
        root + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10):
        pass


def _stats(root: str) -> dict[str, Any]:
    with urllib.request.urlopen(root + "/_sim/stats", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def cpu_per_call(base_url: str, calls: int, stream: bool) -> tuple[float, float]:
    """Client CPU (ms) and context switches (the reads that waited, mostly) per call of
    BRIEFING_MD, streamed or whole."""
    settings = briefd.Settings(base_url=base_url, stream=stream)
    spec = load_pipeline(None).by_name["BRIEFING_MD"]
    body = build_request(spec, "Write BRIEFING_MD for the Northwind account.", settings)
    client = ChatClient(settings, base_url)
    told: list[Event] = []
    client.complete(body, job_id="warm", stage="BRIEFING_MD")
    switches0 = _switches()
    cpu0 = time.process_time()
    for i in range(calls):
        report = ProgressReporter("b", "BRIEFING_MD", 1, spec.max_tokens, told.append)
        done = client.complete(body, job_id=f"c{i}", stage="BRIEFING_MD", on_progress=report)
        assert done.finish_reason == "stop" and (done.ttft_ms is not None) == stream
    cpu = (time.process_time() - cpu0) * 1000 / calls
    return cpu, (_switches() - switches0) / calls


def _switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, -(-99 * len(ordered) // 100) - 1)]


def stragglers(root: str, tag: str, jobs: int, share: float, delay_s: float, seed: int) -> int:
    """Make ``share`` of the stage calls of run ``tag`` wait ``delay_s`` for their first token
    (each once: the call's retry or hedge is on time). The same seed picks the same calls."""
    rng = random.Random(seed)
    picked = [(i, s) for i in range(jobs) for s in STAGES if rng.random() < share]
    for i, stage in picked:
        fault = {"job_id": f"{tag}-{i}", "stage": stage, "first_token_s": delay_s, "times": 1}
        _post(root, "/_sim/faults", fault)
    return len(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--scale", type=float, default=0.005, help="makespan part's latency")
    parser.add_argument("--straggler-s", type=float, default=1.5)
    parser.add_argument("--hedge-after-ms", default="150")
    parser.add_argument("--gap-ms", type=float, default=25.0)
    args = parser.parse_args()
    logger.remove()
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores")

    child, base = start_sim(0.002)  # part 1: chunks spread over ~11 ms, so over many reads
    try:
        cpu: dict[bool, list[float]] = {True: [], False: []}
        switches: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for stream in (True, False) if r % 2 == 0 else (False, True):
                used, waits = cpu_per_call(base, args.calls, stream)
                cpu[stream].append(used)
                switches[stream].append(waits)
    finally:
        child.terminate()
        child.wait()
    whole, streamed = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(
        f"1. client CPU per call: whole {whole:.3f} ms, streamed {streamed:.3f} ms, "
        f"ratio {streamed / whole:.2f}x (target <= 1.3x); context switches per call "
        f"{statistics.median(switches[True]):.1f} vs {statistics.median(switches[False]):.1f} "
        "(the simulator writes a chunk a token: each is a wake-up and a read)"
    )

    child, base = start_sim(args.scale)
    root = base.rsplit("/v1", 1)[0]
    try:
        span: dict[bool, list[float]] = {True: [], False: []}
        cpus: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for stream in (True, False) if r % 2 == 0 else (False, True):
                _post(root, "/_sim/reset", {})
                made, _, used = run_jobs(base, args.jobs, 2, f"m{r}{stream}", stream=stream)
                span[stream].append(made)
                cpus[stream].append(used * 1000 / (4 * args.jobs))
        on, off = statistics.median(span[True]), statistics.median(span[False])
        print(
            f"2. makespan {args.jobs} jobs K=2 (scale {args.scale}): streamed {on:.2f} s, "
            f"whole {off:.2f} s, ratio {on / off:.3f} (target: within noise); client CPU per "
            f"call {statistics.median(cpus[True]):.2f} vs {statistics.median(cpus[False]):.2f} ms"
        )
    finally:
        child.terminate()
        child.wait()

    child, base = start_sim(0.01)
    root = base.rsplit("/v1", 1)[0]
    try:
        tails: dict[bool, list[float]] = {True: [], False: []}
        extra: list[float] = []
        for r in range(args.rounds):
            for hedged in (True, False) if r % 2 == 0 else (False, True):
                _post(root, "/_sim/reset", {})
                BUDGET.reset()
                tag = f"h{r}{hedged}"
                stragglers(root, tag, args.jobs, 0.05, args.straggler_s, seed=r)
                after = {"hedge_after_ms": args.hedge_after_ms} if hedged else {}
                _, latencies, _ = run_jobs(
                    base, args.jobs, 16, tag, gap_s=args.gap_ms / 1000, timeout_ms=30_000, **after
                )
                tails[hedged].append(p99(latencies))
                if hedged:
                    calls = _stats(root)["total_requests"]
                    extra.append(calls / (4 * args.jobs) - 1)
        with_h, without = statistics.median(tails[True]), statistics.median(tails[False])
        print(
            f"3. hedging, 5 % of first tokens +{args.straggler_s:g} s, {args.jobs} jobs K=16, "
            f"one every {args.gap_ms:g} ms, hedge after {args.hedge_after_ms} ms: p99 job "
            f"latency {with_h:.3f} s with, {without:.3f} s without, ratio "
            f"{with_h / without:.2f} (target <= 0.6); extra calls "
            f"{100 * statistics.median(extra):.1f} % (target <= 10 %)"
        )
    finally:
        child.terminate()
        child.wait()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
