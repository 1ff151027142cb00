"""Is the reported speed-up true? The result's ``speedup_ratio`` against the measured one.

The example job (``examples/northwind-briefing.json``) on the simulator in a child
process, in two server modes:

* ``parallel``: the server works on every request at once (a provider, vLLM,
  llama.cpp's server with slots);
* ``serializing``: one request at a time, the others waiting inside their calls
  (llama-cpp-python's server), with llama.cpp's ``timings`` in each answer;
* ``batching``: every request at once, but sharing one processor (n at once each
  at 1/n speed: llama.cpp's server with slots on a CPU-bound machine), ``timings``.

In each mode the job runs with ``BRIEFD_PARALLEL=true`` and ``false``, interleaved
round by round so that the machine's drift hits both alike. The *measured*
speed-up is the median sequential wall time over the median parallel one; the
*reported* one is the median of the parallel runs' ``speedup_ratio`` (sum of the
stages' call times / the job's wall time, issue 19). Target: they agree within
10 % in every mode; the serializing and batching servers' are about 1.0. "by
server" is what the figure said before :mod:`briefd.worktime` (the servers' own
times summed): ~1.5 on the batching server. Load is reported.

``--embedded`` runs the same comparison on the real embedded engine instead
(llama.cpp's server through xllamacpp, 2 slots, SmolLM2), one server started once
and shared by every run, so parallel and sequential runs meet the same server
(the alone rates of :mod:`briefd.worktime` are forgotten before each run, in
every mode, as a fresh ``briefd run`` process starts without them).

Measured here (2 cores shared with other sessions), simulator at 0.05 s/unit, 5
rounds, load 2.7 -> 2.0: parallel 1.39x measured / 1.38x reported; serializing
1.00x / 0.99x; batching 1.00x / 0.99x (by server 1.54x). Embedded, 5 rounds, load
2.3 -> 2.9: parallel 13.8 s, sequential 13.7 s, measured 0.99x, reported 1.03x
(+4.5 %), by server 1.16x; 7 rounds, load 2.0 -> 4.1: 11.4 s against 11.6 s,
measured 1.02x, reported 1.07x (+5.2 %), by server 1.17x.

Then ``--jobs`` jobs at once at K=2 on the parallel simulator (issue 21): per stage
the p50/p95 of call time, time to first token (streamed calls) and queue time, as
the metrics actor keeps them, against the wall time the old figure showed::

    python bench/bench_speedup.py [--scale 0.05] [--rounds 7] [--jobs 100]
    python bench/bench_speedup.py --embedded [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import start_sim
from loguru import logger

import briefd
from briefd.worktime import BOOK

EXAMPLE = Path(__file__).resolve().parent.parent / "examples/northwind-briefing.json"


def _job(job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    job["job_id"] = job_id
    return job


def _run(base_url: str, parallel: bool, job_id: str) -> tuple[int, float, float]:
    """(wall ms, reported speed-up, speed-up by the servers' times) of one run of the example
    job: the last is sum of stages_ms / total, what the figure said before worktime."""
    # Whole answers: the simulator's streams carry no timings and are not shared (batching).
    settings = briefd.Settings(
        base_url=base_url, parallel=parallel, timeout_ms=120_000, stream=False
    )
    BOOK.reset()  # each run learns its server's alone rates anew, as a `briefd run` does
    result = briefd.run(_job(job_id), settings)
    assert result.status == "succeeded", result.errors
    m = result.metrics
    by_server = sum(m.stages_ms.values()) / m.total_ms if m.total_ms else 0.0
    return m.total_ms, m.speedup_ratio, by_server


def _rounds(
    name: str, run: Callable[[bool, str], tuple[int, float, float]], rounds: int
) -> dict[str, float]:
    """``rounds`` interleaved rounds of parallel and sequential runs, and their medians."""
    run(True, f"{name}-warm")  # connections, imports, caches: not in the figures
    par: list[tuple[int, float, float]] = []
    seq: list[tuple[int, float, float]] = []
    for i in range(rounds):  # interleaved; which goes first alternates
        order = (True, False) if i % 2 == 0 else (False, True)
        for parallel in order:
            (par if parallel else seq).append(
                run(parallel, f"{name}-{'p' if parallel else 's'}{i}")
            )
    par_ms = statistics.median(t for t, _, _ in par)
    seq_ms = statistics.median(t for t, _, _ in seq)
    measured = seq_ms / par_ms
    reported = statistics.median(r for _, r, _ in par)
    return {
        "par_ms": par_ms,
        "seq_ms": seq_ms,
        "measured": measured,
        "reported": reported,
        "seq_reported": statistics.median(r for _, r, _ in seq),
        "by_server": statistics.median(v for _, _, v in par),
        "error": reported / measured - 1,
    }


def _mode(name: str, flags: list[str], scale: float, rounds: int) -> dict[str, float]:
    child, url = start_sim(scale, *flags)
    try:
        return _rounds(name, lambda parallel, job_id: _run(url, parallel, job_id), rounds)
    finally:
        child.terminate()
        child.wait(timeout=10)


def _embedded(rounds: int) -> dict[str, float]:
    """The comparison on the real embedded engine: one xllamacpp server, shared."""
    import briefd.api
    from briefd.config.endpoints import EndpointSpec
    from briefd.llm.routing import Breakers, Routing
    from briefd.local.provider import Provider
    from briefd.local.server import LocalModelServer, ensure_model

    server = LocalModelServer(ensure_model(None, None)).start()  # 2 slots, usable cores
    spec = EndpointSpec(name="embedded", kind="embedded", base_url=server.base_url)

    def shared(settings: briefd.Settings, stages: Any = ()) -> Provider:
        # The embedded provider, but on the one server: no _server, so no run stops it.
        routing = Routing.single(spec, server.model, breakers=Breakers())
        return Provider(server.base_url, routing, server.model, "json_schema")

    briefd.api.open_provider = shared  # type: ignore[attr-defined]

    def run(parallel: bool, job_id: str) -> tuple[int, float, float]:
        settings = briefd.Settings(parallel=parallel, timeout_ms=300_000)
        BOOK.reset()  # each run learns the alone rates anew, as a `briefd run` does
        m = briefd.run(_job(job_id), settings).metrics  # partial runs count: the time is real
        by_server = sum(m.stages_ms.values()) / m.total_ms if m.total_ms else 0.0
        return m.total_ms, m.speedup_ratio, by_server

    try:
        return _rounds("embedded", run, rounds)
    finally:
        server.stop()


def _split(scale: float, jobs: int) -> None:
    """``jobs`` jobs at once, K=2: where each stage's time went (p50/p95 ms)."""
    child, url = start_sim(scale)
    try:
        settings = briefd.Settings(base_url=url, max_concurrent=2, timeout_ms=600_000)
        with briefd.Pipeline(settings) as pipeline:
            futures = [pipeline.submit(_job(f"split-{i}")) for i in range(jobs)]
            results = [f.get(timeout=3600) for f in futures]
            snap = pipeline.metrics()
    finally:
        child.terminate()
        child.wait(timeout=10)
    ok = sum(r.status == "succeeded" for r in results)
    print(f"\n{jobs} jobs at once, K=2, parallel simulator ({ok} succeeded): p50/p95 ms per stage")
    print(f"{'stage':<18} {'wall':>13} {'call':>11} {'ttft':>11} {'queued':>13}")

    def cell(s: Any) -> str:
        return f"{s.p50_ms:.0f}/{s.p95_ms:.0f}" if s is not None and s.count else "-"

    for stage in sorted(snap.stage_latency):
        print(
            f"{stage:<18} {cell(snap.stage_latency[stage]):>13} "
            f"{cell(snap.clocks['call'].get(stage)):>11} "
            f"{cell(snap.clocks['ttft'].get(stage)):>11} "
            f"{cell(snap.clocks['queued'].get(stage)):>13}"
        )
    print("wall = the stage's start to end (the old figure); call = its calls; queued = its wait")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="seconds per latency unit")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=100, help="jobs at once for the split")
    parser.add_argument(
        "--embedded", action="store_true", help="the real embedded engine instead of the simulator"
    )
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING", diagnose=False)
    load_before = os.getloadavg()
    if args.embedded:
        modes = {"embedded": _embedded(args.rounds)}
        where = "the embedded engine (xllamacpp, 2 slots, SmolLM2-135M), one server"
    else:
        modes = {
            "parallel": _mode("parallel", [], args.scale, args.rounds),
            "serializing": _mode("serializing", ["--serialize"], args.scale, args.rounds),
            "batching": _mode("batching", ["--batching"], args.scale, args.rounds),
        }
        where = f"simulator at {args.scale} s/unit (stages 7/7/5/6 units)"
    load_after = os.getloadavg()
    print(
        f"example job, {where}, "
        f"{args.rounds} interleaved rounds, medians; {os.cpu_count()} CPUs, load (1/5/15 min) "
        f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, "
        f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after"
    )
    print(
        f"{'server':<12} {'parallel ms':>11} {'sequential ms':>13} {'measured':>9} "
        f"{'reported':>9} {'by server':>9} {'seq rep.':>8} {'error':>7}"
    )
    ok = True
    for name, f in modes.items():
        within = abs(f["error"]) <= 0.10
        ok = ok and within
        print(
            f"{name:<12} {f['par_ms']:>11.0f} {f['seq_ms']:>13.0f} {f['measured']:>8.2f}x "
            f"{f['reported']:>8.2f}x {f['by_server']:>8.2f}x {f['seq_reported']:>7.2f}x "
            f"{f['error']:>+7.1%} {'ok' if within else 'OFF TARGET'}"
        )
    print(
        "measured = sequential / parallel wall time; reported = the parallel runs' "
        "speedup_ratio (sequential-equivalent work / wall); by server = sum of stages_ms / "
        "wall (the servers' own times: the figure before briefd.worktime); seq rep. = "
        "speedup_ratio of the sequential runs (1.0 if true). Target: |error| <= 10 %."
    )
    if args.jobs > 0 and not args.embedded:
        _split(args.scale, args.jobs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
