"""``briefd sim``: the simulated server on the command line, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

from pydantic import ValidationError

from briefd.sim.catalog import DATED_NAMES
from briefd.sim.faults import Fault, ProfileError, SimProfile, load_profile
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


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


_positive.__name__ = "positive number"


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_count.__name__ = "positive integer"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


_fraction.__name__ = "fraction in [0, 1]"


def _pairs(values: list[str] | None, flag: str, need_value: bool) -> dict[str, str] | None:
    """``NAME=VALUE`` flags (``--model gpt-4o``, ``--model my=my-2025-01-01``) as a map."""
    if not values:
        return None
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not name or (need_value and not (sep and value)):
            form = "NAME=MODEL" if need_value else "NAME or NAME=DATED_NAME"
            raise _ArgError(f"argument {flag}: expected {form}, got {item!r}")
        out[name] = value if sep else DATED_NAMES.get(name, name)
    return out


def _add_contract_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that make the simulator a faithful OpenAI / Azure OpenAI endpoint."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse what OpenAI refuses (unknown arguments, no model, strict-schema rules), "
        "answer dated model names, always send x-ratelimit-* headers",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME[=DATED]",
        help="a model served (repeat; default with --strict: gpt-4o, gpt-4o-mini, "
        "gpt-4.1-mini, o4-mini)",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        metavar="NAME=MODEL",
        help="an Azure deployment of a served model (repeat; default: one per model, same name)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require the key held in this environment variable (Bearer; Azure: api-key)",
    )
    parser.add_argument(
        "--cached-fraction",
        type=_fraction,
        metavar="F",
        help="report this share of every prompt as cached (default: OpenAI's prefix rule)",
    )
    parser.add_argument("--rps", type=_positive, help="enforced requests per second (429 beyond)")
    parser.add_argument("--burst", type=_count, help="requests allowed at once (default: --rps)")
    parser.add_argument("--tpm", type=_count, help="enforced tokens per minute (429 beyond)")
    parser.add_argument(
        "--first-token-s",
        type=_non_negative,
        metavar="S",
        help="every streamed answer waits this long for its first token (a whole one: delayed)",
    )
    parser.add_argument(
        "--stall-after",
        type=int,
        metavar="N",
        help="every streamed answer goes silent after N chunks, the connection open (a stall)",
    )
    parser.add_argument(
        "--error-after",
        type=int,
        metavar="N",
        help="every streamed answer sends an error event after N chunks, then ends",
    )
    parser.add_argument(
        "--drip-s",
        type=_positive,
        metavar="S",
        help="a chunk every S seconds (streamed; a whole answer: a byte), slow but never stalled",
    )
    parser.add_argument(
        "--fail-status",
        type=int,
        metavar="CODE",
        help="answer every chat request with this error status (e.g. 503: a dead endpoint)",
    )


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
    parser.add_argument(
        "--serialize",
        action="store_true",
        help="serve one chat request at a time, the others waiting inside their calls, as "
        "llama-cpp-python's server does (implies --timings)",
    )
    parser.add_argument(
        "--batching",
        action="store_true",
        help="work on every chat request at once but share one processor (n at once each at "
        "1/n speed), as llama.cpp's server with slots on a CPU-bound machine (implies --timings)",
    )
    parser.add_argument(
        "--timings",
        action="store_true",
        help="answers carry llama.cpp's timings (prompt_ms, predicted_ms): the server's own "
        "measure of each request's work",
    )
    _add_contract_flags(parser)
    try:
        args = parser.parse_args(argv)
        if not 0 <= args.port <= 65535:
            raise _ArgError(f"argument --port: {args.port} is not in 0..65535")
        if args.burst is not None and args.rps is None:
            raise _ArgError("argument --burst: needs --rps")
        if args.fail_status is not None and not 400 <= args.fail_status <= 599:
            raise _ArgError(f"argument --fail-status: {args.fail_status} is not in 400..599")
        for flag, value in (
            ("--stall-after", args.stall_after),
            ("--error-after", args.error_after),
        ):
            if value is not None and value < 0:
                raise _ArgError(f"argument {flag}: {value} is not a count >= 0")
        streamed = {
            "first_token_s": args.first_token_s,
            "stall_after": args.stall_after,
            "error_after": args.error_after,
            "drip_s": args.drip_s,
        }
        stream_fault = {k: v for k, v in streamed.items() if v is not None}
        if stream_fault and args.fail_status is not None:
            raise _ArgError("argument --fail-status: not with the stream faults")
        if stream_fault:
            try:
                stream_fault_model = Fault(times=None, **stream_fault)
            except ValidationError as exc:
                raise _ArgError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        api_key = None
        if args.api_key_env is not None:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise _ArgError(f"argument --api-key-env: {args.api_key_env} is not set")
        models = _pairs(args.model, "--model", need_value=False)
        deployments = _pairs(args.deployment, "--deployment", need_value=True)
        profile = load_profile(args.faults) if args.faults else SimProfile()
    except (_ArgError, ProfileError) as exc:
        print(f"briefd sim: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.scale is not None:
        profile = profile.model_copy(update={"scale": args.scale})
    if args.fail_status is not None:
        dead = Fault(status=args.fail_status, times=None)
        profile = profile.model_copy(update={"faults": [dead, *profile.faults]})
    if stream_fault:
        profile = profile.model_copy(update={"faults": [stream_fault_model, *profile.faults]})
    try:
        server = SimServer(
            profile,
            host=args.host,
            port=args.port,
            strict=args.strict,
            models=models,
            deployments=deployments,
            api_key=api_key,
            cached_fraction=args.cached_fraction,
            rps=args.rps,
            burst=args.burst,
            tpm=args.tpm,
            serialize=args.serialize,
            timings=True if args.timings else None,
            batching=args.batching,
        )
    except ValueError as exc:  # a deployment naming a model not served
        print(f"briefd sim: error: {exc}", file=sys.stderr)
        return 2
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
        mode = " (strict: OpenAI's contract)" if args.strict else ""
        mode += " (serializing: one request at a time)" if args.serialize else ""
        mode += " (batching: requests share one processor)" if args.batching else ""
        # The URL stays the line's last word: scripts and tests read it from there.
        print(f"briefd sim{mode} listening on {server.base_url}", flush=True)
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
