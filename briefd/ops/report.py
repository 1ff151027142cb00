"""``briefd report FILE... [--json]``: the console's summary of a finished log, for cron and CI.

The same aggregation as the console (:class:`briefd.ops.view.OpsView`) over the
whole log (no time window unless ``--window``), printed once: as the
console's text, or with ``--json`` as data (the shape ``--baseline`` reads
back). Rotated files are given oldest first, the live file last. ``--check``
exits 1 when a rollback signal is crossed, so a CI job or a cron mail can act
on it.

A cluster's logs (one per daemon) are reported as one with ``--log``, once per
log or with a quoted glob: each file is another daemon, their events merged in
time order (:mod:`briefd.ops.sources`), the figures totals over all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from briefd.ops import rollback
from briefd.ops.console import render
from briefd.ops.sources import expand, read_sources
from briefd.ops.view import OpsView

EXIT_OK, EXIT_WARNING, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="briefd report",
        description="The console's figures for a finished event log, printed once (text, or "
        "--json) for cron and CI. Give rotated files oldest first. Exit 0; with --check, 1 when "
        "a rollback signal is crossed; 2 on bad input.",
    )
    parser.add_argument(
        "files", type=Path, nargs="*", metavar="FILE", help="one log's files, oldest first"
    )
    parser.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="FILE",
        help="another daemon's event log, or a quoted glob of them ('/var/log/briefd/*/"
        "events.log'): a cluster's logs reported as one, each file one daemon",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--check", action="store_true", help="exit 1 if a signal is crossed")
    parser.add_argument("--window", type=float, help="only the last N seconds of the log")
    parser.add_argument("--width", type=int, default=120, help="columns of the text output")
    rollback.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the report; exit 0, or 1 with ``--check`` and a crossed signal, 2 on bad input."""
    args = _parser().parse_args(argv)
    if not args.files and not args.log:
        print("briefd report: no log: give FILE... or --log FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        thresholds = rollback.from_arguments(args)
        sources: dict[str, list[Path]] = {str(args.files[-1]): args.files} if args.files else {}
        for path in expand(args.log):
            sources.setdefault(path, [Path(path)])
        records, stats = read_sources(sources)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        print(f"briefd report: {err.filename or err}: cannot read: {reason}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:
        print(f"briefd report: {err}", file=sys.stderr)
        return EXIT_USAGE
    names = [str(f) for files in sources.values() for f in files]
    if args.check and not stats.records:
        files = ", ".join(names)
        print(
            f"briefd report: {files}: no briefd events in {stats.lines} lines; nothing to check",
            file=sys.stderr,
        )
        return EXIT_USAGE
    view = OpsView(thresholds, window_s=args.window)
    view.apply_merged(records)
    snap = view.snapshot()
    if args.json:
        data = snap.to_json()
        data["log"] = {"files": names, **asdict(stats)}
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        console = Console(width=args.width, highlight=False, file=sys.stdout)
        console.print(render(snap, source=", ".join(names), title="briefd report"))
        by_stage = snap.spend.get("by_stage") or {}
        if by_stage:  # the console's spend line has the total and models; a report has room
            parts = [f"{stage} ${usd:,.6f}" for stage, usd in sorted(by_stage.items())]
            console.print("spend by stage: " + ", ".join(parts), markup=False)
        console.print(
            f"log: {stats.lines} lines, {stats.records} records, {stats.ignored} ignored, "
            f"{stats.partial} half-written"
        )
    return EXIT_WARNING if args.check and snap.warnings else EXIT_OK
