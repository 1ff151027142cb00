"""The embedded model's server process: llama.cpp's own HTTP server, through ``xllamacpp``.

Run as ``python -m briefd.local.launcher --model FILE [options]`` (what
:class:`briefd.local.server.LocalModelServer` starts as its child). ``xllamacpp`` ships
llama.cpp's C++ server (parallel slots, continuous batching, ``json_schema`` enforced as a
grammar, ``usage`` and ``timings`` in every answer) in a prebuilt wheel, but as a Python
object rather than an executable: this module is the missing ``llama-server`` command.

Why a child process and not the server object inside briefd: the server's threads decode
with OpenMP and install their own SIGINT/SIGTERM handlers; in a child they can neither
take over briefd's signals nor keep briefd alive, and a crash in C++ is the child's.

The contract with the parent:

* ``--ready-fd N``: one JSON line is written there once the model is loaded and the port is
  bound (``{"address": "http://127.0.0.1:PORT"}``), then the fd is closed. Port 0 lets
  llama.cpp bind a free port itself, so there is no window in which another process can
  take a port we picked.
* The parent holds our stdin open (a pipe). End of file on stdin means the parent is gone
  (even after SIGKILL, which runs no cleanup of its own), and we exit at once: no orphan
  keeps the model in memory. Without ``--watch-stdin`` (a person running this by hand),
  SIGINT/SIGTERM stop it.
* A start that fails exits with code 3 and one line on stderr; llama.cpp's own log lines
  (on stderr, level letter ``E`` for errors) name the cause, and the parent quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

EXIT_START_FAILED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m briefd.local.launcher",
        description="Serve one GGUF model with llama.cpp's server (xllamacpp) on 127.0.0.1.",
    )
    parser.add_argument("--model", required=True, help="the GGUF model file")
    parser.add_argument("--alias", default="", help="the model name /v1/models lists")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port, said on --ready-fd")
    parser.add_argument("--parallel", type=int, default=2, help="slots (requests decoded at once)")
    parser.add_argument("--ctx-per-slot", type=int, default=4096, help="context tokens per slot")
    parser.add_argument("--threads", type=int, default=1, help="decoding threads")
    parser.add_argument("--poll", type=int, default=0, help="llama.cpp busy-wait level, 0-100")
    parser.add_argument("--repeat-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    parser.add_argument("--verbosity", type=int, default=None, help="llama.cpp log threshold")
    return parser.parse_args(argv)


def build_params(args: argparse.Namespace) -> Any:
    """xllamacpp's ``CommonParams`` for ``args`` (imported here: only the child loads it)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_per_slot * args.parallel  # llama.cpp splits it between the slots
    params.fit_params = False  # a CPU run has no device memory to fit; it loads the model twice
    for cpu in (params.cpuparams, params.cpuparams_batch):
        cpu.n_threads = args.threads
        cpu.poll = args.poll
    params.sampling.penalty_repeat = args.repeat_penalty
    if args.seed is not None:
        params.sampling.seed = args.seed
    if args.verbosity is not None:
        params.verbosity = args.verbosity
    return params


def _watch_stdin() -> None:
    """Exit the whole process when the parent's end of our stdin closes (the parent died)."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os._exit(0)


def _stop(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Serve until signalled or orphaned; :data:`EXIT_START_FAILED` if the server cannot start."""
    args = parse_args(argv)
    if args.watch_stdin:
        threading.Thread(target=_watch_stdin, name="briefd-parent-watch", daemon=True).start()
    try:
        import xllamacpp
    except ImportError as err:  # a missing libgomp.so.1 lands here too
        print(f"briefd launcher: cannot load xllamacpp: {err}", file=sys.stderr, flush=True)
        return EXIT_START_FAILED
    try:
        server = xllamacpp.Server(build_params(args))
    except (RuntimeError, ValueError, TypeError) as err:
        print(f"briefd launcher: llama.cpp server did not start: {err}", file=sys.stderr,
              flush=True)  # fmt: skip
        return EXIT_START_FAILED
    # llama.cpp installed its own SIGINT/SIGTERM handlers while starting; they stop its loop
    # but not this process. Ours end the process (the kernel frees the model).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    address = server.listening_address
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "w") as ready:
            ready.write(json.dumps({"address": address, "pid": os.getpid()}) + "\n")
    else:
        print(f"serving {args.model} at {address}", flush=True)
    while True:  # until a signal, or the stdin watcher, ends the process
        signal.pause()


if __name__ == "__main__":
    raise SystemExit(main())
