"""``briefd sim``: the simulated server on the command line, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

from briefd.sim.faults import ProfileError, SimProfile, load_profile
from briefd.sim.server import SimServer


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Raise instead of printing usage, so ``main`` can emit exactly one line."""
        raise _ArgError(message)


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


_non_negative.__name__ = "non-negative number"  # argparse names the type in its error


def main(argv: list[str] | None = None) -> int:
    """``briefd sim``: serve until SIGINT/SIGTERM; exit 2 with one line on bad input."""
    parser = _Parser(
        prog="briefd sim",
        description="A simulated OpenAI-compatible server for demos and tests: the seed's "
        "7/7/5/6 s stage latencies times --scale, optional faults. Prints its URL; runs until "
        "SIGINT or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: pick a free one)")
    parser.add_argument("--scale", type=_non_negative, default=None, help="latency multiplier")
    parser.add_argument("--faults", metavar="FILE.json", help="JSON list of faults or a profile")
    try:
        args = parser.parse_args(argv)
        if not 0 <= args.port <= 65535:
            raise _ArgError(f"argument --port: {args.port} is not in 0..65535")
        profile = load_profile(args.faults) if args.faults else SimProfile()
    except (_ArgError, ProfileError) as exc:
        print(f"briefd sim: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.scale is not None:
        profile = profile.model_copy(update={"scale": args.scale})
    try:
        server = SimServer(profile, host=args.host, port=args.port)
    except OSError as exc:
        print(f"briefd sim: error: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stopping = False

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True  # only a flag: taking locks inside a signal handler can deadlock

    in_main = threading.current_thread() is threading.main_thread()
    previous = (
        {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if in_main
        else {}
    )
    idle = threading.Event()
    try:
        server.start()
        print(f"briefd sim listening on {server.base_url}", flush=True)
        while not stopping:
            idle.wait(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
