"""``briefd submit | status | result | cancel | jobs``: the daemon's client on the command line.

Each command reads the same settings as the daemon (``--config``, ``BRIEFD_*``)
to find it and its token. Exit codes follow ``briefd run``: 0 succeeded,
3 partial, 1 failed, cancelled or not finished (or the daemon is unreachable),
2 bad input or configuration, with one line on stderr. Text that came from the
daemon, the API or the model is printed with its control characters escaped
(:func:`~briefd.ops.eventlog.escape_control`): it can neither drive the
terminal nor forge a line of output.

``submit --wait`` follows the job's event stream (``GET /v1/jobs/{id}/events``:
no polling; the result is in its ``JobCompleted``) and shows a progress bar
(rich) from its events when stderr is a terminal, nothing extra on a pipe, so
scripts read the same lines as before. Against a daemon without event streams
it polls as before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from briefd.config import ConfigError, Settings
from briefd.daemon.client import Client, DaemonError, DaemonUnavailable
from briefd.messages import (
    JobCompleted,
    JobInfo,
    JobResult,
    JobState,
    JobStatus,
    PipelineError,
    ProgressChanged,
    StageState,
)
from briefd.ops.eventlog import escape_control as esc
from briefd.ops.logs import unknown_environment_warnings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
POLL_S = 0.5  # the progress bar's refresh: each turn is one status call and one short result wait
EXIT_HELP = "exit codes: 0 succeeded, 3 partial, 1 failed, cancelled or unreachable, 2 bad input"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        raise ConfigError(f"{self.prog.removeprefix('briefd ')}: {message}")


def _parser(name: str, help_text: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"briefd {name}", description=help_text, epilog=epilog)
    parser.add_argument("--config", type=Path, help="settings TOML file (else $BRIEFD_CONFIG)")
    parser.add_argument("--url", help="the daemon's URL (default: http://$BRIEFD_LISTEN)")
    return parser


def _client(args: argparse.Namespace) -> Client:
    settings = Settings.load(args.config)
    for line in unknown_environment_warnings():  # a misspelt BRIEFD_LISTEN, say
        print(f"briefd: warning: {line}", file=sys.stderr)
    return Client(url=args.url, settings=settings)


def _exit_for(status: JobStatus | JobState) -> int:
    return {"succeeded": EXIT_OK, "partial": EXIT_PARTIAL}.get(status.value, EXIT_FAILED)


def _fail(err: DaemonError) -> int:
    print(f"briefd: {esc(err.message)}", file=sys.stderr)
    if isinstance(err, DaemonUnavailable) or err.status in (409, 429, 503) or err.status >= 500:
        return EXIT_FAILED
    return EXIT_USAGE


def _error_line(e: PipelineError, hint: bool = True) -> str:
    text = f"  error {esc(e.stage)} {e.code}: {esc(e.message)}"
    return f"{text} (hint: {esc(e.hint)})" if hint else text


def _print_result(result: JobResult) -> None:
    print(f"{esc(result.job_id)}: {result.status} in {result.metrics.total_ms} ms")
    for e in result.errors:
        print(_error_line(e), file=sys.stderr)


def _print_info(info: JobInfo) -> None:
    print(f"{esc(info.job_id)}: {info.status} {info.progress:g}% (restarts: {info.restarts})")
    for stage, state in info.stages.items():
        print(f"  {esc(stage):<20} {state}")
    for e in info.errors:
        print(_error_line(e, hint=False))


def submit_main(argv: list[str]) -> int:
    """``briefd submit JOB.json [--wait]``: prints the job id (and the outcome with --wait)."""
    parser = _parser(
        "submit",
        "Submit a job (a JSON file) to the daemon and print its id. A job id the daemon "
        "already has is not run again: that job is the one reported.",
        EXIT_HELP + " (with --wait; without it, 0 once the job is accepted)",
    )
    parser.add_argument("job", type=Path, help="job JSON file")
    parser.add_argument(
        "--wait", action="store_true", help="wait for the result (a progress bar on a terminal)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    args = parser.parse_args(argv)
    with _client(args) as client:
        try:
            sub = client.submit_job(args.job)
            print(esc(sub.job_id), flush=True)
            if not sub.created:
                print(
                    f"briefd: job {esc(sub.job_id)} already exists (state {sub.state}); "
                    "not submitted again",
                    file=sys.stderr,
                    flush=True,
                )
            if not args.wait:
                return EXIT_OK
            console = Console(stderr=True)
            tty = sys.stderr.isatty() and console.is_terminal and not console.is_dumb_terminal
            try:
                result = _wait_on_events(client, sub.job_id, args.timeout, console if tty else None)
            except DaemonError as err:  # a daemon older than the event streams: poll it
                if err.status != 404 or not err.message.startswith("no route"):
                    raise
                if tty:
                    result = _wait_with_bar(client, sub.job_id, args.timeout, console)
                else:
                    result = client.result(sub.job_id, wait=True, timeout=args.timeout)
        except DaemonError as err:
            return _fail(err)
        except TimeoutError as err:
            print(f"briefd: {esc(str(err))}", file=sys.stderr)
            return EXIT_FAILED
    _print_result(result)
    return _exit_for(result.status)


def _wait_on_events(
    client: Client, job_id: str, timeout: float, console: Console | None
) -> JobResult:
    """Follow the job's event stream to its ``JobCompleted``, drawing the bar from its
    ``ProgressChanged`` events on ``console`` (None: no bar). A daemon that restarts
    meanwhile is reconnected to from the last event seen."""
    bar: Progress | None = None
    if console is not None:
        bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
    with bar if bar is not None else contextlib.nullcontext():
        task = bar.add_task(esc(job_id), total=100.0) if bar is not None else None
        for event in client.events(job_id, timeout=timeout):
            if isinstance(event, JobCompleted):
                return event.result
            if bar is not None and task is not None and isinstance(event, ProgressChanged):
                stages = event.progress.stages
                ended = sum(s in (StageState.COMPLETE, StageState.FAILED) for s in stages.values())
                label = f"{esc(job_id)} running {ended}/{len(stages)} stages"
                bar.update(task, completed=event.progress.percent, description=label)
    return client.result(job_id, wait=True, timeout=1.0)  # a stream that ended without it


def _wait_with_bar(client: Client, job_id: str, timeout: float, console: Console) -> JobResult:
    """Wait for the result while a bar shows the job's weighted progress and its stages.

    Each turn asks for the status, then waits up to :data:`POLL_S` for the result
    itself (the daemon's long poll is the pause, so the result is seen the moment
    it exists). A daemon that restarts meanwhile is waited for, as without the bar.
    """
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(esc(job_id), total=100.0)
        while True:
            with contextlib.suppress(DaemonUnavailable):
                info = client.status(job_id)
                ended = sum(
                    s in (StageState.COMPLETE, StageState.FAILED) for s in info.stages.values()
                )
                label = f"{esc(job_id)} {info.status} {ended}/{len(info.stages)} stages"
                bar.update(task, completed=info.progress, description=label)
            left = deadline - time.monotonic()
            try:
                result = client.result(job_id, wait=True, timeout=min(POLL_S, max(left, 0.0)))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id}: not finished after {timeout:g}s") from None
                continue
            except DaemonUnavailable:
                if time.monotonic() >= deadline:
                    raise
                continue
            bar.update(task, completed=100.0, description=f"{esc(job_id)} {result.status}")
            bar.refresh()
            return result


def status_main(argv: list[str]) -> int:
    """``briefd status ID [--json]``: state, per-stage states and progress."""
    parser = _parser(
        "status",
        "A job's state (queued, running or how it ended), each stage's state, its weighted "
        "progress and how many times it was restarted.",
        "exit codes: 0 the job was found, 1 the daemon is unreachable, 2 no such job",
    )
    parser.add_argument("job_id", help="the job's id (what submit printed)")
    parser.add_argument("--json", action="store_true", help="print the JSON the API returns")
    args = parser.parse_args(argv)
    with _client(args) as client:
        try:
            info = client.status(args.job_id)
        except DaemonError as err:
            return _fail(err)
    if args.json:
        print(info.model_dump_json(indent=2))
    else:
        _print_info(info)
    return EXIT_OK


def result_main(argv: list[str]) -> int:
    """``briefd result ID [--wait]``: the result JSON; the exit code says how it ended."""
    parser = _parser(
        "result",
        "A finished job's result as JSON: status, documents, errors, fallbacks, metrics.",
        EXIT_HELP + "; without --wait, 1 also while it is not finished",
    )
    parser.add_argument("job_id", help="the job's id (what submit printed)")
    parser.add_argument("--wait", action="store_true", help="wait for the job to finish")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    args = parser.parse_args(argv)
    with _client(args) as client:
        try:
            result = client.result(args.job_id, wait=args.wait, timeout=args.timeout)
        except DaemonError as err:
            return _fail(err)
        except TimeoutError as err:
            print(f"briefd: {esc(str(err))}", file=sys.stderr)
            return EXIT_FAILED
    print(result.model_dump_json(indent=2))
    return _exit_for(result.status)


def cancel_main(argv: list[str]) -> int:
    """``briefd cancel ID``: cancel; prints the state it is in afterwards."""
    parser = _parser(
        "cancel",
        "Cancel a job: a queued job ends cancelled at once; a running one once its calls "
        "in flight are abandoned. Prints the state it is in afterwards.",
        "exit codes: 0 cancelled or cancelling, 1 the daemon is unreachable, 2 no such job",
    )
    parser.add_argument("job_id", help="the job's id (what submit printed)")
    args = parser.parse_args(argv)
    with _client(args) as client:
        try:
            state = client.cancel(args.job_id)
        except DaemonError as err:
            return _fail(err)
    note = " (cancelling: its calls are abandoned)" if state is JobState.RUNNING else ""
    print(f"{esc(args.job_id)}: {state}{note}")
    return EXIT_OK


def jobs_main(argv: list[str]) -> int:
    """``briefd jobs [--status S] [--limit N] [--json]``: the newest jobs, one per line."""
    parser = _parser("jobs", "List the daemon's newest jobs: id, state and progress, one a line.")
    parser.add_argument(
        "--status", choices=[s.value for s in JobState], help="only the jobs in this state"
    )
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--json", action="store_true", help="print the JSON the API returns")
    args = parser.parse_args(argv)
    with _client(args) as client:
        try:
            jobs = client.jobs(args.status, args.limit)
        except DaemonError as err:
            return _fail(err)
    if args.json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
    for j in [] if args.json else jobs:
        print(f"{esc(j.job_id):<40} {j.status.value:<10} {j.progress:>5g}%")
    return EXIT_OK
