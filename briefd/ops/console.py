"""``briefd console``: a live operations dashboard built only from the event log.

It reads the log that ``briefd serve`` (or any briefd process with
``BRIEFD_LOG_FILE``) writes, so it can watch a daemon on this machine or a log
shipped from elsewhere, and needs no access to the daemon itself. The log is
read once at start (aggregated, rendered once) and then followed: each refresh
applies only the new lines, across rotation and a half-written last line.

Several ``--log`` options, or a glob, follow a cluster's daemons as one
(:mod:`briefd.ops.sources`): their events merged in time order, the header
naming each daemon and whether it is up, the jobs table with the daemon that
runs each job, the tokens summed and per daemon. One log shows as it always did.

Every string that came from the log is shown as plain text with its control
characters escaped: it may quote a model, a server or a client, and must not
drive the terminal or inject rich markup. :func:`render` is shared with
``briefd report``'s text output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from briefd.actors.metrics import LatencySummary
from briefd.ops import rollback
from briefd.ops.by_pipeline import pipelines_line
from briefd.ops.eventlog import escape_control
from briefd.ops.snapshot import JobRow, Snapshot
from briefd.ops.sources import RESCAN_S, LogSet, is_glob
from briefd.ops.view import OpsView
from briefd.ops.writing import writing_table
from briefd.tenants.ids import split_id

EXIT_OK, EXIT_USAGE = 0, 2
WINDOW_S = 900.0

STAGE_LOOK: dict[str, tuple[str, str]] = {
    "pending": ("·", "dim"),
    "running": ("▶ running", "bold green"),
    "retrying": ("↻ retry", "yellow"),
    "complete": ("✓ done", "green"),
    "failed": ("✗ failed", "bold red"),
    "fellback": ("↩ fallback", "magenta"),
}
DAEMON_LOOK = {
    "running": "bold green",
    "stopping": "yellow",
    "stopped": "bold red",
    "lost": "bold red",
}
JOB_LOOK = {
    "running": "bold green",
    "queued": "cyan",
    "succeeded": "green",
    "partial": "yellow",
    "failed": "bold red",
    "cancelled": "dim",
    "interrupted": "dim",
}


def _t(value: object, style: str = "") -> Text:
    """Log text as a rich Text: never parsed as markup, control characters escaped."""
    return Text(escape_control(str(value)), style=style)


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _header(snap: Snapshot, source: str, title: str, notes: Sequence[str]) -> Text:
    text = Text.assemble((title, "bold"), "  ", _t(source), f"  as of {_clock(snap.as_of)}")
    if snap.daemon is not None:
        text.append("  daemon ")
        text.append_text(_t(snap.daemon["state"], "bold"))
        text.append(f" since {_clock(snap.daemon['since'])}")
    if snap.sources:  # a cluster: each daemon and whether it is up
        text.append(f"\n{len(snap.sources)} logs: ")
        for n, src in enumerate(snap.sources):
            text.append(", " if n else "")
            text.append_text(_t(src["name"], "bold"))
            text.append(" ")
            text.append_text(_t(src["status"], DAEMON_LOOK.get(src["status"], "dim")))
    for note in notes:
        text.append("\n")
        text.append_text(_t(note, "yellow"))
    counts = [f"{len(snap.active) - snap.queued} running", f"{snap.queued} queued"]
    counts += [f"{n} {status}" for status, n in sorted(snap.jobs_by_status.items())]
    text.append("\njobs: " + ", ".join(counts))
    return text


def _warnings(snap: Snapshot) -> RenderableType | None:
    if not snap.warnings:
        return None
    lines = [
        Text.assemble(
            ("ROLLBACK SIGNAL ", "bold red"),
            f"{s.name} rate {_pct(s.rate)} ({s.numerator}/{s.denominator}) is up more than "
            f"{_pct(s.threshold)} over its baseline {_pct(s.baseline)}",
        )
        for s in snap.warnings
    ]
    if "mode" in snap.guard:  # the daemon's automatic rollback watches these signals itself
        lines.append(Text("the daemon's automatic rollback acts on these (see below)", style="red"))
    else:
        lines.append(Text("consider the rollback: BRIEFD_PARALLEL=false", style="red"))
    return Panel(Group(*lines), border_style="red", title="warning")


def _jobs(snap: Snapshot, limit: int) -> Table:
    rows: list[JobRow] = snap.active[:limit]
    rows += snap.recent[: max(0, limit - len(rows))]
    stages: list[str] = []
    for job in rows:
        stages += [s for s in job.stages if s not in stages]
    table = Table(title="jobs", title_justify="left")
    owners = ("daemon",) if snap.sources else ()  # which daemon runs it, in a cluster
    tenants = ("tenant",) if any("." in j.job_id for j in rows) else ()  # docs/tenants.md
    for name in ("job", *tenants, *owners, "state", "progress", *stages, "time", "cost"):
        table.add_column(_t(name), no_wrap=True)
    for job in rows:
        cells = []
        for stage in stages:
            glyph, style = STAGE_LOOK.get(job.stages.get(stage, ""), ("", ""))
            cells.append(Text(glyph, style=style))
        end = job.ended if job.ended is not None else snap.as_of
        took = job.total_ms / 1000 if job.total_ms is not None else end - job.since
        bar = ProgressBar(total=100.0, completed=job.percent, width=12)
        percent = Table.grid(padding=(0, 1))
        percent.add_row(bar, f"{job.percent:5.1f}%")
        tenant, bare = split_id(job.job_id)
        table.add_row(
            _t(bare if tenants else job.job_id),
            *(_t(tenant) for _ in tenants),
            *(_t(job.owner or "-") for _ in owners),
            _t(job.state, JOB_LOOK.get(job.state, "")),
            percent,
            *cells,
            f"{took:.1f} s",
            _usd(job.cost_usd) if job.cost_usd is not None else "-",
        )
    hidden = len(snap.active) - min(len(snap.active), limit)
    if hidden:
        table.caption = f"and {hidden} more active jobs"
    return table


def _capacity(snap: Snapshot) -> Text:
    tk = snap.tokens
    window = tk.get("window")
    adapted = f", window {window}" if window is not None and window < tk["capacity"] else ""
    members = tk.get("cluster") or 0
    shared = f" for the cluster of {members}" if members > 1 else ""
    text = Text.assemble(
        ("tokens ", "bold"),
        f"{tk['in_use']}/{tk['capacity']}{adapted}{shared} (peak {tk['peak']})  ",
        ("stages in flight ", "bold"),
        f"{snap.stages_running} (peak {snap.peak_stages_running})  ",
        ("queued jobs ", "bold"),
        str(snap.queued),
    )
    if tk.get("waiting") is not None:
        text.append(f", {tk['waiting']} stages waiting for a token")
    text.append_text(Text.assemble("  ", ("rate-limit cool-downs ", "bold"), str(tk["cooldowns"])))
    if tk["cooling_down_s"] > 0:
        text.append(f" (cooling down, {tk['cooling_down_s']:.1f} s left)", style="bold yellow")
    for src in snap.sources:  # the sums above, daemon by daemon
        each = src["tokens"]
        window = each.get("window")
        adapted = f", window {window}" if window is not None and window < each["capacity"] else ""
        text.append("\n  ")
        text.append_text(_t(src["name"], "bold"))
        held = (  # a cluster's daemon holds some of the cluster's tokens, has no K of its own
            f"holds {each['in_use']} (peak {each['peak']})"
            if src.get("cluster")
            else f"tokens {each['in_use']}/{each['capacity']}{adapted} (peak {each['peak']})"
        )
        text.append(
            f": {held}, "
            f"stages in flight {src['stages_running']}, active jobs {src['active_jobs']}, "
            f"last event {_clock(src['newest'])}"
        )
    return text


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _endpoints(snap: Snapshot) -> Text | None:
    """One line for the endpoints, shown once a job has named one or a failover happened:
    who served what, who was left, whose breaker is open."""
    if not snap.endpoints or (len(snap.endpoints) == 1 and not snap.totals.get("failovers")):
        return None
    text = Text.assemble(("endpoints ", "bold"))
    for i, (name, e) in enumerate(snap.endpoints.items()):
        if i:
            text.append("  ·  ")
        style = {"open": "bold red", "half_open": "yellow"}.get(e["state"], "green")
        text.append_text(_t(name, "bold"))
        text.append(f" {e['state'].replace('_', '-')}", style=style)
        text.append(f", served {e['served']}")
        if e["failed_over"] or e["skipped"]:
            text.append(f", left {e['failed_over']}, skipped {e['skipped']}", style="yellow")
        if e["state"] == "open" and isinstance(e.get("retry_at"), int | float):
            text.append(f", probe in {max(0.0, e['retry_at'] - snap.as_of):.0f} s")
    return text


def _spend(snap: Snapshot) -> Text | None:
    """Spend from the jobs' results, and the daemon's guard rails as its events said."""
    sp, guard = snap.spend, snap.guard
    if not sp.get("total_usd") and not guard:
        return None
    text = Text.assemble(
        ("spend ", "bold"),
        f"{_usd(sp.get('total_usd', 0.0))} total, {_usd(sp.get('last_minute_usd', 0.0))}/min",
    )
    by_model = sorted(sp.get("by_model", {}).items(), key=lambda kv: -kv[1])[:4]
    if by_model:
        text.append("  by model: ")
        text.append_text(_t(", ".join(f"{m} {_usd(v)}" for m, v in by_model)))
    budget = guard.get("budget")
    if budget and budget.get("held"):
        text.append("\nDAILY BUDGET SPENT", style="bold yellow")
        text.append(
            f": {_usd(budget.get('spent_usd') or 0)} of {_usd(budget.get('budget_usd') or 0)}"
            " today; new jobs wait queued until 00:00 UTC or a SIGHUP raises it"
        )
    mode = guard.get("mode")
    if mode and mode.get("mode") != "parallel":
        text.append(f"\nAUTOMATIC ROLLBACK: {mode['mode']}", style="bold red")
        text.append(" (new jobs) since " + _clock(mode.get("since")) + ": ")
        text.append_text(_t(mode.get("reason", "")))
    return text


def _p50_95(s: LatencySummary | None) -> str:
    return "" if s is None or not s.count else f"{s.p50_ms:.0f}/{s.p95_ms:.0f}"


def _latency(snap: Snapshot) -> Table:
    """p50/p95 of each stage's call time and TTFT, its queue time apart; wall time below."""
    window = f"last {snap.window_s:.0f} s" if snap.window_s else "whole log"
    table = Table(
        title=f"latency ms, p50/p95 ({snap.latency_jobs} jobs, {window})",
        caption="call: the server's own measure if given, else sent to last byte; "
        "queued: waiting for a token; groups, total: wall",
        title_justify="left",
        caption_justify="left",
    )
    for name in ("", "n", "call", "ttft", "queued"):
        table.add_column(name, justify="right" if name else "left")
    for stage, summary in snap.stage_latency.items():
        table.add_row(
            _t(stage),
            str(summary.count),
            _p50_95(summary),
            _p50_95(snap.stage_ttft.get(stage)),
            _p50_95(snap.stage_queued.get(stage)),
        )
    for label, s in (
        ("parallel group", snap.parallel_group),
        ("sequential group", snap.sequential_group),
        ("total", snap.total),
    ):
        table.add_row(_t(label, "bold"), str(s.count), _p50_95(s) or "0/0", "", "")
    return table


def _signals(snap: Snapshot) -> Table:
    table = Table(title="rollback signals", title_justify="left")
    for name in ("signal", "rate", "of", "baseline", "threshold", ""):
        table.add_column(name)
    for s in snap.signals:
        status = Text("WARN", style="bold red") if s.crossed else Text("ok", style="green")
        table.add_row(
            s.name,
            _pct(s.rate),
            f"{s.numerator}/{s.denominator}",
            _pct(s.baseline),
            f"+{_pct(s.threshold)}",
            status,
        )
    return table


def _errors(snap: Snapshot) -> Table:
    table = Table(title="recent errors", title_justify="left", expand=True)
    for name in ("time", "job", "stage", "code", "message", "hint"):
        table.add_column(
            name,
            overflow="ellipsis",
            no_wrap=True,
            ratio=2 if name in ("message", "hint") else None,
        )
    for e in snap.errors:
        code = _t(e.code + ("" if e.final else " (retried)"), "red" if e.final else "yellow")
        table.add_row(
            _clock(e.ts), _t(e.job_id), _t(e.stage), code, _t(e.message[:300]), _t(e.hint)
        )
    return table


def render(
    snap: Snapshot,
    *,
    source: str,
    job_rows: int = 12,
    title: str = "briefd console",
    notes: Sequence[str] = (),
) -> RenderableType:
    """The whole dashboard for one snapshot (the console's screen, the report's text);
    ``notes`` are lines for the header: logs waited for, files that cannot be read."""
    side = Table.grid(padding=(0, 4))
    side.add_row(_latency(snap), _signals(snap))
    speedup = Text.assemble(
        ("speed-up (sequential work / wall) ", "bold"),
        f"{snap.mean_speedup:.2f}x (mean over parallel jobs of the stages' sequential work: "
        "call times, or tokens at the server's pace alone, over the job's wall time)",
    )
    parts = [_header(snap, source, title, notes), _warnings(snap), _jobs(snap, job_rows)]
    parts.append(writing_table(snap, job_rows))  # streaming stages: tokens, last line
    parts += [_capacity(snap), _endpoints(snap), _spend(snap), pipelines_line(snap.pipelines)]
    parts += [side, speedup, _errors(snap)]
    return Group(*(p for p in parts if p is not None))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="briefd console",
        description="A live operations dashboard built only from the event log "
        "(BRIEFD_LOG_FILE): jobs, parallel stages, tokens, p50/p95 latency, speed-up and "
        "rollback signals. Ctrl-C to leave.",
    )
    parser.add_argument(
        "--log",
        action="append",
        metavar="FILE",
        help="an event log (default: BRIEFD_LOG_FILE); repeat it, or give a quoted glob "
        "('/var/log/briefd/*/events.log'), to follow several daemons (a cluster) as one",
    )
    parser.add_argument(
        "--rescan",
        type=float,
        default=RESCAN_S,
        metavar="S",
        help=f"seconds between looks for new files matching a glob (default {RESCAN_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=0.5, help="refresh period, seconds")
    parser.add_argument(
        "--window", type=float, default=WINDOW_S, help="seconds of log the rates cover (0: all)"
    )
    parser.add_argument("--jobs", type=int, default=12, help="job rows shown")
    parser.add_argument("--width", type=int, help="columns (default: the terminal's)")
    rollback.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the console; 0 when stopped (Ctrl-C, SIGTERM) or after ``--once``."""
    args = _parser().parse_args(argv)
    specs: list[str] = args.log or []
    if not specs:
        from briefd.config import Settings

        default = Settings.load().log_file
        specs = [str(default)] if default is not None else []
    if not specs:
        print("briefd console: no log: pass --log FILE or set BRIEFD_LOG_FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        thresholds = rollback.from_arguments(args)
    except (OSError, ValueError) as err:
        print(f"briefd console: --baseline: {err}", file=sys.stderr)
        return EXIT_USAGE
    view = OpsView(thresholds, window_s=args.window or None)
    logs = LogSet(specs, rescan_s=args.rescan)
    console = Console(width=args.width, highlight=False)
    try:
        if args.once:
            problem = logs.check()
            if problem is None:
                for path in logs.followers:  # an empty log is shown too
                    view.add_source(path)
                view.apply_merged(logs.poll())
                problem = next(iter(logs.problems.values()), None)
            if problem is not None:
                print(f"briefd console: {escape_control(problem)}", file=sys.stderr)
                return EXIT_USAGE
            snap = view.snapshot(time.time())
            console.print(render(snap, source=", ".join(specs), job_rows=args.jobs))
            return EXIT_OK
        return _live(view, logs, console, args)
    finally:
        logs.close()


def _live(view: OpsView, logs: LogSet, console: Console, args: argparse.Namespace) -> int:
    """Follow the logs until stopped: apply what is new, re-render once per interval."""
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    source = ", ".join(logs.specs)
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                for path in logs.followers:  # shown from the start, waiting if need be
                    view.add_source(path)
                view.apply_merged(logs.poll())
                if not logs.exists() and not view.newest:  # nothing to show yet: say why
                    lines = [*logs.waiting(), *logs.problems.values()]
                    if len(logs.specs) == 1 and not is_glob(source):  # as it always said
                        lines = [f"waiting for {source} ..."]
                    live.update(_t("\n".join(lines)), refresh=True)
                else:
                    snap = view.snapshot(time.time())
                    notes = [*logs.waiting(), *logs.problems.values()]
                    screen = render(snap, source=source, job_rows=args.jobs, notes=notes)
                    live.update(screen, refresh=True)
                if stop.wait(args.interval):
                    return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)
