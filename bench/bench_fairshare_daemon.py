"""Issue 23's first target through a real ``briefd serve``: a newcomer behind a backlog.

    .venv/bin/python bench/bench_fairshare_daemon.py [--jobs 1000] [--rounds 1] [--scale 0.01]

A daemon (SQLite, the built-in four-stage pipeline, K=2: ``BRIEFD_MAX_CONCURRENT=2``,
the default active window of 8 jobs) against the simulator at ``--scale`` s per
latency unit (0.01: its 1/100 scale). Tenant ``a`` submits ``--jobs`` jobs through its
own API key, then tenant ``b`` submits one (equal weights). Unlike
``bench_fairshare.py`` (one in-process ``Pipeline``), b's job must get through the
daemon's admission first: the root's queue, where it used to wait behind a's whole
backlog before the limiter saw a single call of it.

Printed, medians over ``--rounds`` of interleaved runs (a alone, a then b, b alone),
each a fresh daemon, from its JSON log (``BRIEFD_LOG_LEVEL=DEBUG`` for ``TokenGranted``):

* **b's admission**: how many of a's jobs started between b's acceptance and b's
  start (0: admitted at once);
* **b's grant rounds**: grants made from b's job starting to its first grant,
  counting that one (target <= 2);
* **b's end**: submission to ``JobCompleted`` against b alone (target <= 1.5x), and
  how long its calls waited for tokens (``TokenGranted.waited_ms``, summed);
* **a's makespan**: a's first acceptance to its last ``JobCompleted``, with b against
  without (target < 2 % longer; one run's noise on a loaded machine is larger).

The load average is printed with each run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon_helpers import HTTP, Daemon, make_job, wait_for

from briefd.sim.server import SimProfile, SimServer


def _cli(d: Daemon, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "briefd", *args],
        env=d.env,
        cwd=d.tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(f"briefd {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _lines(d: Daemon) -> list[dict[str, Any]]:
    out = []
    for line in d.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            out.append(obj)
    return out


def run(kind: str, sim: SimServer, tmp: Path, jobs: int) -> dict[str, float]:
    """One fresh daemon: ``kind`` is ``a``, ``ab`` or ``b``. Figures from its log."""
    d = Daemon(
        tmp,
        sim.base_url,
        max_concurrent=2,
        log_level="DEBUG",
        api_rate_per_key=0,  # a's 1,000 submissions in a burst
    )
    for name in ("a", "b"):
        _cli(d, "tenant", "add", name)
    d.start(ready_s=60)
    try:
        keys = {t: _cli(d, "key", "create", t, "--scopes", "submit,read") for t in ("a", "b")}
        want = (jobs if "a" in kind else 0) + (1 if "b" in kind else 0)
        for t, n in (("a", jobs if "a" in kind else 0), ("b", 1 if "b" in kind else 0)):
            auth = {"Authorization": f"Bearer {keys[t]}"}
            for i in range(n):
                r = HTTP.post(
                    f"{d.url}/v1/jobs", json=make_job(f"{t}-{i}"), headers=auth, timeout=30
                )
                if r.status_code != 202:
                    raise SystemExit(f"submit {t}-{i}: {r.status_code} {r.text}")

        def ended() -> bool:
            return sum(1 for e in _lines(d) if e["event"] == "JobCompleted") >= want

        if not wait_for(ended, 60 + jobs * 2.0, interval_s=2.0):
            raise SystemExit(f"{kind}: not every job ended:\n{d.log()[-3000:]}")
    finally:
        d.stop()
    return _figures(_lines(d))


def _figures(lines: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    accepted = {e["job_id"]: e["ts"] for e in lines if e["event"] == "JobAccepted"}
    completed = {e["job_id"]: e["ts"] for e in lines if e["event"] == "JobCompleted"}
    a_ids = [j for j in accepted if j.startswith("a.")]
    if a_ids:
        out["a_makespan_s"] = max(completed[j] for j in a_ids) - min(accepted[j] for j in a_ids)
    if "b.b-0" not in accepted:
        return out
    out["b_job_s"] = completed["b.b-0"] - accepted["b.b-0"]
    seen_accept = seen_start = False
    admitted_after = grants = 0
    for e in lines:
        job = e.get("job_id")
        if e["event"] == "JobAccepted" and job == "b.b-0":
            seen_accept = True
        elif e["event"] == "JobStarted" and seen_accept and not seen_start:
            if job == "b.b-0":
                seen_start = True
            else:
                admitted_after += 1
        elif e["event"] == "TokenGranted" and seen_start:
            grants += 1
            if job == "b.b-0":
                break
    waits = [e for e in lines if e["event"] == "TokenGranted" and e.get("job_id") == "b.b-0"]
    out["b_token_wait_ms"] = sum(float(e.get("waited_ms", 0)) for e in waits)
    out["b_admitted_after"] = admitted_after
    out["b_grant_rounds"] = grants
    return out


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scale", type=float, default=0.01, help="seconds per latency unit")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"a": [], "ab": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp, SimServer(SimProfile(scale=args.scale)) as sim:
        for r in range(args.rounds):
            for kind in ("b", "ab", "a") if r % 2 else ("a", "ab", "b"):
                where = Path(tmp) / f"{kind}{r}"
                where.mkdir()
                figures = run(kind, sim, where, args.jobs)
                results[kind].append(figures)
                shown = ", ".join(f"{k}={v:.3f}" for k, v in sorted(figures.items()))
                print(f"round {r + 1} {kind:>2}: {shown}  ({_load()})", flush=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(f[key] for f in results[kind])

    alone, loaded = med("b", "b_job_s"), med("ab", "b_job_s")
    a_alone, a_with = med("a", "a_makespan_s"), med("ab", "a_makespan_s")
    print(f"\n{args.jobs} jobs of a, then 1 of b; K=2; scale {args.scale}; {args.rounds} round(s)")
    print(f"b: admitted after {med('ab', 'b_admitted_after'):.0f} of a's jobs started")
    print(f"b: first grant {med('ab', 'b_grant_rounds'):.0f} grant(s) after it started (<= 2)")
    print(f"b: {loaded * 1000:.0f} ms against {alone * 1000:.0f} ms alone: {loaded / alone:.2f}x")
    print(
        f"b: its calls waited {med('ab', 'b_token_wait_ms'):.0f} ms for tokens in all "
        f"({med('b', 'b_token_wait_ms'):.0f} ms alone)"
    )
    growth = (a_with / a_alone - 1) * 100
    print(f"a: makespan {a_with:.1f} s against {a_alone:.1f} s without b: {growth:+.1f} %")
    print(_load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
