"""The ``briefd`` command line.

Exit codes: 0 succeeded, 3 partial, 1 failed (or cancelled), 2 bad input or
configuration (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from briefd.config import ConfigError, Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


# Commands that live in their own modules: name -> (module, function, help).
# Each function takes the arguments after the command name and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sim": ("briefd.sim.cli", "main", "run the simulated OpenAI-compatible server"),
    "local-model": ("briefd.local.server", "main", "run the embedded local model server"),
    "serve": ("briefd.daemon.main", "main", "run the long-running daemon"),
    "submit": ("briefd.daemon.client_cli", "submit_main", "submit a job to the daemon"),
    "status": ("briefd.daemon.client_cli", "status_main", "a job's status from the daemon"),
    "result": ("briefd.daemon.client_cli", "result_main", "a job's result from the daemon"),
    "cancel": ("briefd.daemon.client_cli", "cancel_main", "cancel a job in the daemon"),
    "jobs": ("briefd.daemon.client_cli", "jobs_main", "list the daemon's jobs"),
    "console": ("briefd.ops.console", "main", "live operations console from the event log"),
    "report": ("briefd.ops.report", "main", "summary of a finished event log"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, no usage dump
        self.exit(EXIT_USAGE, f"briefd: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="briefd", description="Multi-stage LLM document pipelines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one job and write its documents")
    run.add_argument("job", type=Path, help="job JSON file")
    run.add_argument("--out", type=Path, required=True, help="output directory")
    run.add_argument("--config", type=Path, help="settings TOML file")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    try:
        if args_in and args_in[0] in COMMANDS:
            module_name, func_name, _ = COMMANDS[args_in[0]]
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                print(f"briefd: {args_in[0]}: not available ({err.name})", file=sys.stderr)
                return EXIT_USAGE
            code: int = getattr(module, func_name)(args_in[1:])
            return code
        args = build_parser().parse_args(args_in)
        return _run(args)
    except ConfigError as err:
        print(f"briefd: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("briefd: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from briefd.api import Pipeline
    from briefd.jobs import load_job_file
    from briefd.messages import JobStatus
    from briefd.ops.logs import setup_logging
    from briefd.output import write_document, write_result

    settings = Settings.load(args.config)
    setup_logging(settings)
    out: Path = args.out
    with Pipeline(settings) as pipeline:
        job = load_job_file(args.job, pipeline.pipeline)

        def stream(stage: str, document: Any) -> None:
            write_document(out, pipeline.pipeline, stage, document)

        future = pipeline.submit(job, on_document=None if settings.buffer_results else stream)
        result = future.get(timeout=pipeline.job_timeout_s())
    paths = write_result(out, pipeline.pipeline, result)
    print(
        f"{result.job_id}: {result.status} in {result.metrics.total_ms} ms "
        f"(speed-up {result.metrics.speedup_ratio:.2f}x)"
    )
    for p in paths:
        print(f"  {p}")
    print(f"  {out / 'result.json'}")
    for e in result.errors:
        print(f"  error {e.stage} {e.code}: {e.message} (hint: {e.hint})", file=sys.stderr)
    return {
        JobStatus.SUCCEEDED: EXIT_OK,
        JobStatus.PARTIAL: EXIT_PARTIAL,
    }.get(result.status, EXIT_FAILED)
