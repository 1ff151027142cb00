"""``briefd console`` in a real terminal (tmux) beside live processes running jobs.

Two writers of the event log: ``briefd serve`` with jobs submitted through its
API, and tests/data/live_jobs.py --forever (real pipelines, batch after batch,
no daemon). The tests read the console's screen with ``tmux capture-pane`` and
wait, with a deadline, to see jobs queue, run (stages in flight side by side)
and succeed: the screen moves with the log.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from briefd.actors.metrics import LatencySummary
from briefd.cli import main as cli_main
from briefd.daemon.client import Client
from briefd.sim.server import SimProfile, SimServer

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "data" / "live_jobs.py"
TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(
    TMUX is None and not os.environ.get("CI"),
    reason="tmux is not installed (CI installs it: apt-get install -y tmux)",
)


def child_env() -> dict[str, str]:
    """This environment without BRIEFD_* settings, or a COLUMNS that would beat the pane's size."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}
    for name in ("COLUMNS", "LINES"):
        env.pop(name, None)
    return env


class Tmux:
    """A private tmux server (its own socket), so no user session is touched."""

    def __init__(self, where: Path) -> None:
        assert TMUX is not None, "tmux is required in CI: apt-get install -y tmux"
        self.base = [TMUX, "-S", str(where / "tmux.sock")]

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env=child_env(),
        )
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "console")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10, check=False)


def wait_for(tmux: Tmux, seen: Callable[[str], bool], timeout_s: float, what: str) -> str:
    """Poll the console's screen until ``seen(screen)``; fail showing the last screen."""
    tick, deadline = threading.Event(), time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.screen()
        if seen(screen):
            return screen
        tick.wait(0.2)
    raise AssertionError(f"never saw {what}; last screen:\n{screen}")


@pytest.fixture
def live_log(tmp_path: Path) -> Iterator[Path]:
    """A process running jobs forever into ``briefd.log``; stopped with SIGTERM after the test."""
    log = tmp_path / "briefd.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(RUNNER),
            "--log",
            str(log),
            "--results",
            str(tmp_path / "r.jsonl"),
            "--forever",
            "--scale",
            "0.1",
        ],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def succeeded(screen: str) -> int:
    """The header's count of succeeded jobs."""
    match = re.search(r"(\d+) succeeded", screen)
    return int(match.group(1)) if match else 0


def start_console(tmux: Tmux, log: Path, where: Path) -> None:
    """``briefd console --log LOG`` in a 160x48 tmux pane."""
    console = [sys.executable, "-m", "briefd", "console", "--log", str(log), "--interval", "0.2"]
    command = f"cd {shlex.quote(str(where))} && unset COLUMNS LINES && exec {shlex.join(console)}"
    tmux.run(
        "-f", "/dev/null", "new-session", "-d", "-s", "console", "-x", "160", "-y", "48", command
    )


def test_console_follows_a_live_log_in_tmux(live_log: Path, tmp_path: Path) -> None:
    """Jobs appear running with stages in flight, then succeed, then later jobs show up."""
    tmux = Tmux(tmp_path)
    start_console(tmux, live_log, tmp_path)
    try:
        first = wait_for(
            tmux,
            lambda s: re.search(r"live-\d+ +│ running .*▶ running", s) is not None,
            30,
            "a running job with a stage in flight",
        )
        assert "briefd console" in first and "tokens" in first and "latency" in first
        later = wait_for(tmux, lambda s: succeeded(s) >= 4, 60, "four jobs succeeded")
        assert succeeded(later) > succeeded(first), "the screen moves with the log"
        assert re.search(r"live-\d+ +│ succeeded", later)
        assert re.search(r"total +│ +[1-9]\d* │ +\d+/\d+ │", later), "latency table fills in"
        assert "speed-up (sequential work / wall)" in later and "rollback signals" in later
    finally:
        tmux.kill()


@dataclass
class Daemon:
    """A running ``briefd serve``: its event log and a client of its API."""

    log: Path
    client: Client


def free_port() -> int:
    """A loopback port nobody listens on (a tiny race, acceptable in a test)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """``briefd serve`` (two jobs at a time) against a simulated API; SIGTERM afterwards."""
    port, data = free_port(), tmp_path / "data"
    with SimServer(SimProfile(scale=0.1)) as sim:
        env = child_env()
        env.update(
            BRIEFD_BASE_URL=sim.base_url,
            BRIEFD_LOG_FILE=str(tmp_path / "briefd.log"),
            BRIEFD_LOG_FORMAT="json",
            BRIEFD_DATA_DIR=str(data),
            BRIEFD_LISTEN=f"127.0.0.1:{port}",
            BRIEFD_MAX_ACTIVE_JOBS="2",
        )
        cmd = [sys.executable, "-m", "briefd", "serve"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
        try:
            tick, deadline = threading.Event(), time.monotonic() + 30
            client: Client | None = None
            while client is None or not client.healthy():
                assert proc.poll() is None, "briefd serve exited"
                assert time.monotonic() < deadline, "briefd serve did not come up"
                token = data / "token"
                if client is None and token.is_file() and token.read_text().strip():
                    client = Client(f"http://127.0.0.1:{port}", token.read_text().strip())
                tick.wait(0.1)
            with client:
                yield Daemon(tmp_path / "briefd.log", client)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_console_beside_briefd_serve_in_tmux(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Submitted jobs queue, run two at a time and succeed on screen; report matches results."""
    tmux = Tmux(tmp_path)
    start_console(tmux, daemon.log, tmp_path)
    try:
        wait_for(tmux, lambda s: "daemon running" in s, 30, "the daemon's DaemonStarted")
        stages = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
        ids = [
            daemon.client.submit(
                {"job_id": f"d-{n}", "prompts": {s: f"Acme {n}: {s}" for s in stages}}
            )
            for n in range(6)
        ]
        busy = wait_for(
            tmux,
            lambda s: re.search(r"[1-9]\d* queued", s) is not None and "▶ running" in s,
            30,
            "queued jobs beside a running one",
        )
        assert re.search(r"d-\d +│ queued", busy) and re.search(r"d-\d +│ running", busy)
        done = wait_for(tmux, lambda s: succeeded(s) == 6, 90, "all six jobs succeeded")
        assert re.search(r"0 running, 0 queued", done)
    finally:
        tmux.kill()
    results = [daemon.client.result(job_id, timeout=30) for job_id in ids]
    assert cli_main(["report", str(daemon.log), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    totals = LatencySummary.of([r.metrics.total_ms for r in results])
    assert report["jobs_by_status"] == {"succeeded": 6}
    assert (report["total"]["p50_ms"], report["total"]["p95_ms"]) == (totals.p50_ms, totals.p95_ms)
    assert report["daemon"]["state"] == "running"
