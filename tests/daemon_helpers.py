"""Helpers for the daemon tests: ``briefd serve`` as a real subprocess against the simulator.

The simulator runs in the test process (its counters are read directly); the
daemon runs as a child with its own data dir and a free loopback port, and is
driven through :class:`briefd.Client`, raw HTTP and signals. Waits poll with a
deadline on a ``threading.Event``, never with a bare sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from briefd.daemon.client import Client

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
HTTP = requests.Session()
HTTP.trust_env = False  # loopback only, never through a proxy


def free_port() -> int:
    """A port nothing listens on right now (the daemon binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll ``condition()`` until truthy (returned) or the deadline (returns the last value)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        pause.wait(interval_s)


def make_job(job_id: str) -> dict[str, Any]:
    """A valid job for the built-in pipeline, with prompts that name the job."""
    return {
        "job_id": job_id,
        "prompts": {stage: f"{stage} for {job_id}\nsecond line" for stage in STAGES},
        "procurement_metrics": {"source": "fallback"},
    }


def journal_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the daemon's journal, read with a connection of our own."""
    db = sqlite3.connect(data_dir / "briefd.sqlite3")
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def complete_stages(data_dir: Path) -> set[tuple[str, str]]:
    """(job, stage) pairs whose documents the journal holds: never to be requested again."""
    return {
        (job, stage)
        for job, stage in journal_rows(
            data_dir, "SELECT job_id, stage FROM stages WHERE state = 'complete'"
        )
    }


class Daemon:
    """One ``briefd serve`` child process. Start it, use it, stop or kill it."""

    def __init__(self, tmp: Path, base_url: str, **settings: Any) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "daemon.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BRIEFD_")}
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            self.env.pop(key, None)
        self.env.update(
            {
                "BRIEFD_BASE_URL": base_url,
                "BRIEFD_DATA_DIR": str(self.data_dir),
                "BRIEFD_LISTEN": f"127.0.0.1:{self.port}",
                "BRIEFD_LOG_FORMAT": "json",
                "BRIEFD_BACKOFF_INITIAL_S": "0.05",
                "BRIEFD_BACKOFF_MAX_S": "0.2",
            }
        )
        self.env.update({f"BRIEFD_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []

    def start(self, *args: str, ready_s: float = 20.0) -> Daemon:
        """Start and wait until ``/healthz`` answers (fails with the log if it exits)."""
        self.args = list(args)
        self.proc = self.spawn(self.command(*args))
        self.wait_ready(ready_s)
        return self

    def command(self, *args: str) -> list[str]:
        """The child's command line (a test may launch the daemon another way)."""
        return [sys.executable, "-m", "briefd", "serve", *args]

    def spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        """Start ``cmd`` with its output appended to the log file."""
        log = open(self.log_path, "ab")  # noqa: SIM115  closed by the child's exit
        try:
            return subprocess.Popen(
                cmd, cwd=self.tmp, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    def wait_ready(self, ready_s: float) -> None:
        """Until ``/healthz`` answers 200; fails with the log if the child exits first."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                return HTTP.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_for(ready, ready_s), f"daemon not ready in {ready_s}s:\n{self.log()}"

    def cli(self, *args: str) -> str:
        """``briefd ARGS`` (``tenant add``, ``key create``...) with this daemon's environment
        and folder, so it finds the same database; its stdout, failing with stderr if not 0."""
        done = subprocess.run(
            [sys.executable, "-m", "briefd", *args],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text(encoding="utf-8").strip()

    def client(self) -> Client:
        return Client(url=self.url, token=self.token, timeout_s=10)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code; fails (with the log) if still running after ``timeout_s``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon still running after {timeout_s}s:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed, nothing is cleaned up)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]
        except OSError:
            return "(no log)"

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines whose ``event`` is ``name``."""
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == name:
                found.append(obj)
        return found


def sim_cli_answer(cmd: list[str], says: str, stage: str = "PLAYS_MD") -> dict[str, Any]:
    """Start ``briefd sim`` (``cmd``, with ``--port 0``) in a child, check that its first line
    says ``says``, ask it one chat completion as ``stage``, stop it; the answer's JSON."""
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert says in line, line
        url = line.rsplit(" ", 1)[1].strip()
        body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
        answer: dict[str, Any] = requests.post(
            f"{url}/chat/completions", json=body, headers={"X-Briefd-Stage": stage}, timeout=10
        ).json()
        return answer
    finally:
        child.terminate()
        child.wait(timeout=10)
