"""The example job on the embedded engine: do the JSON stages parse, and how long does it take?

Runs ``briefd run examples/northwind-briefing.json`` (a fresh process each time: the server's
start is counted, as a user sees it) ``--runs`` times on this checkout's embedded engine and
counts, per JSON stage, the runs in which the stage succeeded (its answer parsed and matched
the job's schema: no error, no fallback). The first ``--rounds`` runs are interleaved with runs
of a reference checkout (``--ref``, e.g. the main branch with llama-cpp-python's server), so
both see the same machine load:

    python bench/bench_local_json.py [--runs 20] [--rounds 5] [--ref /work/main]

Targets (issue 19): each JSON stage valid in >= 19 of 20 runs; the job's wall time <= 0.75 x
the reference's (medians). The load average is printed before and after.

Measured here (2 cores shared with other sessions, load average 4-7), against the main
branch's llama-cpp-python server: PROCUREMENT_JSON and ANNEX_JSON valid in 20/20 runs; wall
19.5 s against 28.7 s (0.68 x), the job's total_ms 17.0 s against 26.7 s (0.64 x). The JSON
stages run at temperature 0 with a fixed seed, so the 20 runs differ only by batching order:
the rate says the example job parses reliably, not that every prompt will.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
JOB = "examples/northwind-briefing.json"
JSON_STAGES = ("PROCUREMENT_JSON", "ANNEX_JSON")


def run_job(repo: Path, python: Path) -> tuple[float, dict[str, object]]:
    """One ``briefd run`` of the example job in ``repo`` with ``python``: wall s, result."""
    with tempfile.TemporaryDirectory(prefix="bench-json-") as tmp:
        out = Path(tmp) / "out"
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        for name in ("BRIEFD_BASE_URL", "BRIEFD_ENDPOINTS", "BRIEFD_MODEL"):
            env.pop(name, None)
        started = time.monotonic()
        proc = subprocess.run(
            [str(python), "-m", "briefd", "run", str(repo / JOB), "--out", str(out)],
            cwd=repo, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        wall = time.monotonic() - started
        result_file = out / "result.json"
        if not result_file.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"{repo}: briefd run failed ({proc.returncode}): {tail}")
        result: dict[str, object] = json.loads(result_file.read_text())
    return wall, result


def failed_stages(result: dict[str, object]) -> set[str]:
    errors = result.get("errors") or []
    assert isinstance(errors, list)
    return {str(e.get("stage")) for e in errors if isinstance(e, dict)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="runs interleaved with --ref")
    parser.add_argument("--ref", type=Path, default=None, help="a reference checkout")
    parser.add_argument("--ref-python", type=Path, default=None,
                        help="its interpreter (default: REF/.venv/bin/python)")  # fmt: skip
    args = parser.parse_args()
    ours_python = Path(sys.executable)
    ref_python = args.ref_python or (args.ref / ".venv/bin/python" if args.ref else None)
    print(f"load before: {os.getloadavg()}", flush=True)
    valid = dict.fromkeys(JSON_STAGES, 0)
    statuses: dict[str, int] = {}
    walls: dict[str, list[float]] = {"ours": [], "ref": []}
    totals: dict[str, list[float]] = {"ours": [], "ref": []}
    for i in range(args.runs):
        plan = ["ours"]
        if args.ref is not None and i < args.rounds:
            plan = ["ours", "ref"] if i % 2 == 0 else ["ref", "ours"]
        for who in plan:
            repo, python = (HERE, ours_python) if who == "ours" else (args.ref, ref_python)
            assert repo is not None and python is not None
            wall, result = run_job(repo, python)
            metrics = result.get("metrics")
            total_ms = metrics.get("total_ms", 0) if isinstance(metrics, dict) else 0
            if who == "ours":
                bad = failed_stages(result)
                for stage in JSON_STAGES:
                    valid[stage] += stage not in bad
                status = str(result.get("status"))
                statuses[status] = statuses.get(status, 0) + 1
            if i < args.rounds:
                walls[who].append(wall)
                totals[who].append(float(total_ms) / 1000)
            print(f"run {i + 1} {who}: {result.get('status')} wall {wall:.1f}s job "
                  f"{float(total_ms) / 1000:.1f}s failed {sorted(failed_stages(result))} "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    print(f"\nload after: {os.getloadavg()}")
    print(f"statuses over {args.runs} runs: {statuses}")
    for stage in JSON_STAGES:
        print(f"{stage}: valid in {valid[stage]}/{args.runs} runs")
    if walls["ref"]:
        for label, data in (("process wall", walls), ("job total_ms", totals)):
            ours, ref = statistics.median(data["ours"]), statistics.median(data["ref"])
            runs = len(data["ours"])
            print(f"{label}: ours median {ours:.1f}s, reference {ref:.1f}s, "
                  f"ratio {ours / ref:.2f} (median of {runs} interleaved runs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
