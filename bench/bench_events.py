"""Event streams of one ``briefd serve``: delivery latency with 100 streams, RSS of 1,000 idle.

The simulator and the daemon run as child processes (the daemon as in production:
SQLite journal, ``synchronous=FULL``). The streams are read by this process with
asyncio (one thread, raw sockets: the client's own cost stays small):

* **latency**: each round submits ``--jobs`` jobs and opens ``--streams`` job streams
  over them (round-robin), and measures, for every event received, the time from
  the event's ``ts`` (made in the stage or coordinator, before the journal commits
  it) to the moment its ``data:`` line arrives. Rounds alternate with a reference
  round of one stream per job (``--jobs`` streams), so both see the same load
  drift; medians of the rounds' p50 and p99 are printed, with the load average.
  ``BENCH_DIR=/dev/shm`` puts the journal on tmpfs: the difference is the fsync of
  each commit (a stream shows an event once it is durable).
  Per event type too: a ``StageStarted`` is told once its request is sent (its ``ts``
  is older: the stage's own choice), and events after a stage's document wait in the
  journal behind that document's file write.
* **memory**: the daemon's RSS before and after opening ``--idle`` idle streams
  (``GET /v1/events``: nothing happens while they are open), and after closing them.

    python bench/bench_events.py [--rounds 5] [--streams 100] [--jobs 20] [--idle 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from common import job, start_sim

TS = re.compile(rb'"ts":([0-9.]+)')
TYPE = re.compile(rb'"type":"(\w+)"')
BY_TYPE: dict[str, list[float]] = {}
"""Every live delivery's latency by event type (all rounds with many streams)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start_daemon(base_url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}
    env.update(
        {
            "BRIEFD_BASE_URL": base_url,
            "BRIEFD_DATA_DIR": str(data_dir),
            "BRIEFD_LISTEN": f"127.0.0.1:{port}",
            "BRIEFD_LOG_FORMAT": "json",
            "BRIEFD_MAX_CONCURRENT": "8",
            "BRIEFD_MAX_STREAMS_PER_TOKEN": "5000",
        }
    )
    log = open(data_dir.parent / "daemon.log", "ab")  # noqa: SIM115  the child holds it
    child = subprocess.Popen(
        [sys.executable, "-m", "briefd", "serve"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    pause = threading.Event()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        pause.wait(0.1)
    else:
        child.kill()
        raise SystemExit("the daemon did not start; see daemon.log")
    token = (data_dir / "token").read_text().strip()
    return child, url, token


async def open_stream(port: int, token: str, path: str) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{path}: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    reader._briefd_writer = writer  # type: ignore[attr-defined]  # closed by the caller
    return reader


async def follow(
    reader: asyncio.StreamReader, latencies: list[float], by_type: dict[str, list[float]]
) -> None:
    """Each event's delivery latency (ms) until the job's JobCompleted; only events made
    after the stream was open (older ones are replays, not deliveries)."""
    opened = time.time()
    last = False
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"event: JobCompleted"):
            last = True
        elif line.startswith(b"data: "):
            now = time.time()
            m = TS.search(line)
            if m and float(m.group(1)) >= opened:
                latencies.append((now - float(m.group(1))) * 1000)
                kind = TYPE.search(line)
                by_type.setdefault(kind.group(1).decode() if kind else "?", []).append(
                    latencies[-1]
                )
            if last:
                return


async def latency_round(url: str, token: str, streams: int, jobs: int, tag: str) -> list[float]:
    port = int(url.rsplit(":", 1)[1])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    ids = [f"{tag}-{i}" for i in range(jobs)]
    loop = asyncio.get_running_loop()  # a stream needs its job: submit, then open them
    for job_id in ids:
        await loop.run_in_executor(
            None, lambda j=job_id: session.post(f"{url}/v1/jobs", json=job(j))
        )
    readers = await asyncio.gather(
        *(open_stream(port, token, f"/v1/jobs/{ids[i % jobs]}/events") for i in range(streams))
    )
    latencies: list[list[float]] = [[] for _ in readers]
    by_type: dict[str, list[float]] = BY_TYPE if streams > jobs else {}
    await asyncio.wait_for(
        asyncio.gather(*(follow(r, latencies[i], by_type) for i, r in enumerate(readers))), 300
    )
    for r in readers:
        r._briefd_writer.close()  # type: ignore[attr-defined]
    return [x for lat in latencies for x in lat]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def idle_memory(pid: int, url: str, token: str, idle: int) -> tuple[float, float, float]:
    port = int(url.rsplit(":", 1)[1])
    await asyncio.sleep(1.0)
    before = rss_mib(pid)
    gate = asyncio.Semaphore(50)

    async def one() -> asyncio.StreamReader:
        async with gate:
            return await open_stream(port, token, "/v1/events")

    readers = await asyncio.gather(*(one() for _ in range(idle)))
    await asyncio.sleep(2.0)
    held = rss_mib(pid)
    for r in readers:
        r._briefd_writer.close()  # type: ignore[attr-defined]
    await asyncio.sleep(3.0)
    return before, held, rss_mib(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=0.1)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.idle + 256)), hard))
    sim, base_url = start_sim(args.scale)
    tmp = Path(tempfile.mkdtemp(prefix="briefd-bench-events-", dir=os.environ.get("BENCH_DIR")))
    (tmp / "data").mkdir()
    daemon, url, token = start_daemon(base_url, tmp / "data")
    results: dict[str, list[tuple[float, float, int]]] = {"many": [], "reference": []}
    try:
        print(f"load before: {load()}")
        for n in range(args.rounds):
            for kind, streams in (("many", args.streams), ("reference", args.jobs)):
                lat = asyncio.run(latency_round(url, token, streams, args.jobs, f"r{n}{kind[0]}"))
                results[kind].append((pct(lat, 0.5), pct(lat, 0.99), len(lat)))
                p50, p99, count = results[kind][-1]
                print(
                    f"round {n + 1} {kind:9} {streams:4d} streams: p50 {p50:6.1f} ms  "
                    f"p99 {p99:6.1f} ms  ({count} events)  load {load()}"
                )
        before, held, after = asyncio.run(idle_memory(daemon.pid, url, token, args.idle))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        sim.terminate()
        sim.wait(10)
    for kind, rows in results.items():
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        print(f"{kind:9}: median of rounds p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    for kind, values in sorted(BY_TYPE.items()):
        print(f"  {kind:16} p50 {pct(values, 0.5):6.1f} ms  p99 {pct(values, 0.99):6.1f} ms")
    print(
        f"daemon RSS: {before:.1f} MiB idle, {held:.1f} MiB holding {args.idle} idle streams "
        f"(+{held - before:.1f} MiB), {after:.1f} MiB after they closed"
    )
    print(f"load after: {load()}")
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
