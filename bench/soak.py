"""Soak: a few hundred jobs through a real ``briefd serve`` with a seeded mix of trouble.

The daemon runs as a child process against the project's simulator (in this
process, so its counters are exact). Jobs are submitted from several client
threads; a seeded share of them meets an upstream fault (429 with
Retry-After, 500, 503, a dropped connection, a hang past the deadline, a slow
drip, invalid JSON, a truncated answer), is cancelled at a random moment, or
is submitted twice. At the end it prints what the promise needs:

* jobs accepted and jobs ended (each in exactly one terminal state, from the
  journal and from the event log's ``JobCompleted`` lines);
* stages re-bought: (job, stage) pairs the simulator answered 200 in full
  more than once (a paid document bought twice);
* the daemon's threads, open fds and RSS after a warm-up job and at the end.

Not part of CI's run (it takes a minute or more)::

    .venv/bin/python bench/soak.py --jobs 300 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from briefd.daemon.client import Client, DaemonError
from briefd.sim.faults import Fault, SimProfile
from briefd.sim.server import SimServer

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
TERMINAL = {"succeeded", "partial", "failed", "cancelled"}


def _fault(rng: random.Random, job_id: str) -> Fault:
    stage = rng.choice(STAGES)
    kind = rng.choice(["429", "500", "503", "drop", "hang", "drip", "invalid", "truncate"])
    base: dict[str, Any] = {"job_id": job_id, "stage": stage, "times": rng.choice([1, 2])}
    shapes: dict[str, dict[str, Any]] = {
        "429": {"status": 429, "retry_after": "0"},
        "500": {"status": 500},
        "503": {"status": 503},
        "drop": {"drop": True},
        "hang": {"hang": True, "times": 1},
        "drip": {"drip_s": 0.0005},
        "invalid": {"invalid_json": True, "times": 1},
        "truncate": {"truncate": True, "times": 1},
    }
    return Fault(**{**base, **shapes[kind]})


def _job(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "prompts": {s: f"{s} for {job_id}" for s in STAGES},
        "procurement_metrics": {"source": "fallback"},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_figures(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "threads": int(fields["Threads"].strip()),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_kib": int(fields["VmRSS"].split()[0]),
    }


def _wait(condition: Any, timeout_s: float) -> bool:
    pause = threading.Event()
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.1)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=0.01, help="simulator latency scale")
    parser.add_argument("--fault-share", type=float, default=0.3)
    parser.add_argument("--cancel-share", type=float, default=0.05)
    parser.add_argument("--dup-share", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="briefd-soak-"))
    sim = SimServer(SimProfile(scale=args.scale)).start()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}
    env.update(
        {
            "BRIEFD_BASE_URL": sim.base_url,
            "BRIEFD_DATA_DIR": str(tmp / "data"),
            "BRIEFD_LISTEN": f"127.0.0.1:{port}",
            "BRIEFD_LOG_FORMAT": "json",
            "BRIEFD_LOG_FILE": str(tmp / "events.log"),
            "BRIEFD_LOG_LEVEL": "WARNING",
            "BRIEFD_TIMEOUT_MS": "1500",
            "BRIEFD_BACKOFF_INITIAL_S": "0.02",
            "BRIEFD_BACKOFF_MAX_S": "0.1",
        }
    )
    with open(tmp / "daemon.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "briefd", "serve"], env=env, stdout=out, stderr=out, cwd=tmp
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        if not _wait(healthy, 30):
            print((tmp / "daemon.out").read_text()[-3000:], file=sys.stderr)
            return 1
        token = (tmp / "data" / "token").read_text().strip()
        client = Client(url=url, token=token, timeout_s=30)
        client.submit(_job("warm-up"))
        client.result("warm-up", timeout=60)
        start_figures = _proc_figures(proc.pid)
        ids = [f"soak-{i:04d}" for i in range(args.jobs)]
        for job_id in ids:
            if rng.random() < args.fault_share:
                sim.inject(_fault(rng, job_id))
        plan = {
            job_id: (rng.random() < args.cancel_share, rng.random() < args.dup_share)
            for job_id in ids
        }
        delays = {job_id: rng.uniform(0.0, 0.3) for job_id in ids}
        accepted: set[str] = set()
        lock = threading.Lock()
        refused: Counter[str] = Counter()

        def one(job_id: str) -> None:
            cancel, dup = plan[job_id]
            with Client(url=url, token=token, timeout_s=30) as c:
                try:
                    c.submit(_job(job_id))
                except DaemonError as err:
                    refused[err.code] += 1
                    return
                with lock:
                    accepted.add(job_id)
                if dup:
                    c.submit(_job(job_id))
                if cancel:
                    threading.Event().wait(delays[job_id])
                    c.cancel(job_id)

        def all_ended() -> bool:
            rows = _journal(tmp, "SELECT state, COUNT(*) FROM jobs GROUP BY state")
            return sum(n for state, n in rows if state not in TERMINAL) == 0

        # Two halves, each run to its end: a leak grows from the first plateau to the
        # second; warm pools (HTTP threads, connections) do not.
        t0 = time.monotonic()
        half = len(ids) // 2
        submitted_s = 0.0
        ended_in_time = True
        plateaus: list[dict[str, int]] = []
        for part in (ids[:half], ids[half:]):
            t1 = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, part))
            submitted_s += time.monotonic() - t1
            ended_in_time = _wait(all_ended, 600) and ended_in_time
            _wait(lambda: sim.stats().in_flight == 0, 10)
            plateaus.append(_proc_figures(proc.pid))
        elapsed = time.monotonic() - t0
        end_figures = plateaus[-1]
        states = dict(_journal(tmp, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        terminal_events = _terminal_events(tmp / "events.log")
        stats = sim.stats()
        bought = Counter((r.job_id, r.stage) for r in stats.requests if r.status == 200)
        rebought = {k: n for k, n in bought.items() if n > 1}
        ended = sum(n for s, n in states.items() if s in TERMINAL)
        multi = [j for j, n in terminal_events.items() if n != 1 and j in accepted]
        no_event = [j for j in accepted if terminal_events.get(j, 0) == 0]
        print(f"load: {os.getloadavg()[0]:.2f} (1-min) on {os.cpu_count()} cores")
        print(
            f"jobs: {len(ids)} submitted, {len(accepted)} accepted, refused {dict(refused)}, "
            f"{sum(1 for c, _ in plan.values() if c)} cancels, "
            f"{sum(1 for _, d in plan.values() if d)} duplicates"
        )
        print(f"submitted in {submitted_s:.1f}s; all ended: {ended_in_time} after {elapsed:.1f}s")
        print(f"journal states: {states}")
        print(f"jobs ended: {ended} of {len(accepted) + 1} (warm-up included)")
        print(f"lost jobs (accepted, not terminal): {len(accepted) + 1 - ended}")
        odd = sorted(multi + no_event)
        print(f"jobs without exactly one terminal event: {len(odd)} {odd[:5]}")
        print(f"upstream requests: {stats.total_requests}, answered 200: {sum(bought.values())}")
        print(f"stages re-bought: {len(rebought)} {sorted(rebought)[:5]}")
        for key in ("threads", "fds", "rss_kib"):
            print(
                f"{key}: start {start_figures[key]}, after half {plateaus[0][key]}, "
                f"end {end_figures[key]}"
            )
        ok = ended_in_time and not rebought and not multi and not no_event
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sim.stop()


def _journal(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp / "data" / "briefd.sqlite3", timeout=10)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def _terminal_events(log: Path) -> Counter[str]:
    """Per job: how many ``JobCompleted`` lines (a run's end, or a job closed in the queue)."""
    found: Counter[str] = Counter()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "JobCompleted":
            found[obj["job_id"]] += 1
    return found


if __name__ == "__main__":
    raise SystemExit(main())
