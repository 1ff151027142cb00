"""The ``briefd`` command line.

Exit codes: 0 succeeded, 3 partial, 1 failed (or cancelled, or an output file
could not be written), 2 bad input or configuration (one line on stderr, never
a traceback). ``--out`` is checked before any call is paid for. Text that came
from the API or the model is printed with its control characters escaped, so
it can neither drive the terminal nor forge a log line.

``briefd`` alone lists the commands (stderr, exit 2), ``briefd --version`` prints
the installed version, and each command's ``--help`` says what it does: the
first look at a tool is its help.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any

from loguru import logger

from briefd import __version__
from briefd.config import ConfigError, Settings
from briefd.messages import JobResult, JobStatus
from briefd.ops.eventlog import escape_control
from briefd.output import RESULT_FILE, OutputDir, OutputError, Written

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


# Commands that live in their own modules: name -> (module, function, help).
# Each function takes the arguments after the command name and returns an exit code;
# each has a parser of its own, so ``briefd NAME --help`` is that parser's help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("briefd.daemon.serve", "main", "run the daemon: an HTTP API for many jobs at once"),
    "submit": ("briefd.daemon.client_cli", "submit_main", "submit a job to the daemon"),
    "status": ("briefd.daemon.client_cli", "status_main", "a job's state and progress"),
    "result": ("briefd.daemon.client_cli", "result_main", "a finished job's result (JSON)"),
    "cancel": ("briefd.daemon.client_cli", "cancel_main", "cancel a job in the daemon"),
    "jobs": ("briefd.daemon.client_cli", "jobs_main", "list the daemon's jobs"),
    "tenant": ("briefd.tenants.cli", "tenant_main", "add or list tenants (docs/tenants.md)"),
    "key": ("briefd.tenants.cli", "key_main", "create, list or revoke tenants' API keys"),
    "console": ("briefd.ops.console", "main", "live operations console from the event log"),
    "report": ("briefd.ops.report", "main", "summary of a finished event log"),
    "sim": ("briefd.sim.cli", "main", "run the simulated OpenAI-compatible server"),
    "pipeline": ("briefd.pipelines.check", "main", "check a pipeline file: DAG, critical path"),
    "local-model": ("briefd.local.server", "main", "run the embedded local model's server"),
}

DESCRIPTION = """\
Multi-stage LLM document pipelines against any OpenAI-compatible chat API.
With no BRIEFD_BASE_URL, jobs run on a small model embedded on this machine."""

EPILOG = """\
`briefd COMMAND --help` describes a command. Start with:
  briefd run examples/northwind-briefing.json --out out/"""

RUN_DESCRIPTION = """\
Run one job (a JSON file of prompts, one per stage) to the end and write one
document per stage, plus result.json, into --out. --out must be a directory
briefd can write in; it is checked before any call is made."""

RUN_EPILOG = """\
exit codes:
  0  succeeded: every stage's call succeeded
  3  partial: some stages failed (each error is on stderr, with a hint)
  1  failed or cancelled, or an output file could not be written
  2  bad input or configuration (one line on stderr naming the field or file)

environment (or the same names, lower-case and without BRIEFD_, in --config's TOML):
  BRIEFD_BASE_URL        OpenAI-compatible base URL (unset: the embedded local model)
  BRIEFD_ENDPOINT_KIND   openai (default: documented arguments only), azure, compatible
  BRIEFD_API_KEY         sent as "Authorization: Bearer ..."; never logged
  BRIEFD_MODEL           model name sent (default: the server's only model, from /models)
  BRIEFD_ENDPOINTS       endpoints and model aliases with failover (docs/providers.md)
  BRIEFD_JOB_DEADLINE_S  a job's deadline unless it sets deadline_s (default none)
  BRIEFD_MAX_CONCURRENT  API calls in flight at once (default 2)
  BRIEFD_PARALLEL        false: one stage at a time, in dependency order (default true)
  BRIEFD_TIMEOUT_MS      total deadline of one call (default 60000)
  BRIEFD_MAX_RETRIES     retries after the first attempt (default 2)
  BRIEFD_LOG_LEVEL       TRACE, DEBUG, INFO, WARNING, ERROR, in any case (default INFO)
  BRIEFD_LOG_FORMAT      auto (text on a terminal, JSON lines otherwise), text or json
  BRIEFD_LOG_FILE        also write the event log (JSON lines) to this file
  BRIEFD_CONFIG          a settings TOML file (what --config gives)
A BRIEFD_* variable briefd does not know is warned about. All settings: README.md."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, no usage dump
        self.exit(EXIT_USAGE, f"briefd: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="briefd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"briefd {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, title="commands", metavar="COMMAND"
    )
    run = sub.add_parser(
        "run",
        help="run one job and write its documents",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("job", type=Path, help="job JSON file")
    run.add_argument("--out", type=Path, required=True, help="output directory (made if missing)")
    run.add_argument("--config", type=Path, help="settings TOML file (else $BRIEFD_CONFIG)")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    # The command line is an application: briefd's messages are wanted (the library is
    # quiet until then). ``run`` and ``serve`` go on to set up their own sinks.
    logger.enable("briefd")
    try:
        if not args_in:  # a first look: what the commands are, on stderr, exit 2
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        if args_in[0] in COMMANDS:
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
    except ConfigError as err:  # one line per mistake
        for line in str(err).splitlines():
            print(f"briefd: {escape_control(line)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("briefd: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from briefd.api import Pipeline
    from briefd.jobs import load_job_file
    from briefd.ops.logs import setup_logging

    settings = Settings.load(args.config)
    setup_logging(settings)
    pipeline = Pipeline(settings)  # reads the pipelines; nothing starts before ``with``
    job = load_job_file(args.job, pipeline.registry)
    spec = pipeline.registry.for_job(job)  # the one the job names: its output files
    streamed: dict[str, Any] = {}  # stage -> document already in its file
    made = not args.out.exists()
    with _open_out(args.out) as out:
        try:
            with pipeline:

                def stream(stage: str, document: Any) -> None:  # tried again at the end
                    with contextlib.suppress(OutputError):
                        out.write_document(spec, stage, document)
                        streamed[stage] = document

                on_document = None if settings.buffer_results else stream
                future = pipeline.submit(job, on_document=on_document)
                result = future.get(timeout=pipeline.job_timeout_s())
        except BaseException:
            if made:  # a run that never got going leaves no empty folder behind
                with contextlib.suppress(OSError):
                    args.out.rmdir()
            raise
        written = out.write_result(spec, result, already=streamed)
    return _report(result, written)


def _open_out(path: Path) -> OutputDir:
    """``--out`` as a folder a file can be written in, checked before any call is paid for."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a directory")
    try:
        out = OutputDir.open(path)
    except OutputError as err:
        raise ConfigError(f"--out {path}: cannot make the directory: {err.reason}") from None
    try:
        out.probe()
    except OutputError as err:
        out.close()
        raise ConfigError(f"--out {path}: cannot write there: {err.reason}") from None
    return out


def _report(result: JobResult, written: Written) -> int:
    """The summary (stdout), the errors and unwritten files (stderr, escaped); the exit code.

    Files that could not be written make the run fail (exit 1) but lose nothing:
    when ``result.json`` itself is one of them, the result is printed whole.
    """
    ok = result.status is JobStatus.SUCCEEDED and not written.failed
    speedup = result.metrics.speedup_ratio
    speed = f" (speed-up {speedup:.2f}x: sequential work / wall)" if ok else ""
    took = f"{result.status} in {result.metrics.total_ms} ms"
    print(f"{escape_control(result.job_id)}: {took}{speed}")
    for path in written.paths:
        print(f"  {path}")
    for e in result.errors:
        print(
            f"  error {escape_control(e.stage)} {e.code}: {escape_control(e.message)} "
            f"(hint: {escape_control(e.hint)})",
            file=sys.stderr,
        )
    for err in written.failed:
        note = " (the result is printed on stdout)" if err.path.name == RESULT_FILE else ""
        print(
            f"briefd: {err.path}: not written: {escape_control(err.reason)}{note}", file=sys.stderr
        )
    if any(err.path.name == RESULT_FILE for err in written.failed):
        print(result.model_dump_json(indent=2))
    if written.failed:
        return EXIT_FAILED
    return {
        JobStatus.SUCCEEDED: EXIT_OK,
        JobStatus.PARTIAL: EXIT_PARTIAL,
    }.get(result.status, EXIT_FAILED)
