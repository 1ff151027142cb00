"""The seed's rollback signals: error rate, timeout rate, quality-gate failures.

The seed says roll back (``BRIEFD_PARALLEL=false``) when the error rate is up
more than 5%, the timeout rate up more than 10%, or quality-gate failures go
up. "Up" needs a baseline: the rates of an earlier log, read from its
``briefd report --json`` (``--baseline``), or zero without one, which makes the
thresholds absolute rates. A stage that failed ``INVALID_JSON`` or
``TRUNCATED`` failed its quality gate (the document did not validate).
Definitions of each rate: ``docs/events.md``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

QUALITY_CODES = frozenset({"INVALID_JSON", "TRUNCATED"})


@dataclass(frozen=True)
class Thresholds:
    """Rollback thresholds: a signal warns when ``rate - baseline > threshold``.

    >>> Thresholds(error=0.05).with_baseline(Path("last-week.json"))  # doctest: +SKIP
    """

    error: float = 0.05
    timeout: float = 0.10
    quality: float = 0.0
    baseline_error: float = 0.0
    baseline_timeout: float = 0.0
    baseline_quality: float = 0.0
    min_samples: int = 10
    """Below this many finished stages (attempts, for timeouts) no signal warns: 1 of 1 is noise."""

    def with_baseline(self, report_json: Path) -> Thresholds:
        """These thresholds over the rates of an earlier ``briefd report --json``.

        Raises ``OSError`` if it cannot be read, ``ValueError`` if it is not such a report.
        """
        try:
            rates = json.loads(report_json.read_text(encoding="utf-8"))["rates"]
            return replace(
                self,
                baseline_error=float(rates["error_rate"]),
                baseline_timeout=float(rates["timeout_rate"]),
                baseline_quality=float(rates["quality_rate"]),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{report_json}: not a `briefd report --json` ({err!r})") from None


@dataclass(frozen=True)
class Signal:
    """One rollback signal: ``numerator / denominator`` against baseline and threshold."""

    name: str
    rate: float
    numerator: int
    denominator: int
    baseline: float
    threshold: float
    crossed: bool


def signals(
    t: Thresholds, *, failed: int, quality: int, finished: int, timeouts: int, attempts: int
) -> list[Signal]:
    """The three signals from stage counts (finished stages, stage attempts)."""
    out = []
    for name, num, den, base, limit in (
        ("error", failed, finished, t.baseline_error, t.error),
        ("timeout", timeouts, attempts, t.baseline_timeout, t.timeout),
        ("quality", quality, finished, t.baseline_quality, t.quality),
    ):
        rate = round(num / den, 4) if den else 0.0
        crossed = den >= t.min_samples and rate - base > limit + 1e-9
        out.append(Signal(name, rate, num, den, base, limit, crossed))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The threshold flags ``console`` and ``report`` share."""
    group = parser.add_argument_group("rollback signals (see docs/events.md)")
    group.add_argument("--error-threshold", type=float, default=Thresholds.error, metavar="R")
    group.add_argument("--timeout-threshold", type=float, default=Thresholds.timeout, metavar="R")
    group.add_argument("--quality-threshold", type=float, default=Thresholds.quality, metavar="R")
    group.add_argument("--min-samples", type=int, default=Thresholds.min_samples, metavar="N")
    group.add_argument(
        "--baseline",
        type=Path,
        metavar="REPORT_JSON",
        help="rates of an earlier log (its `briefd report --json`); default: all zero",
    )


def from_arguments(args: argparse.Namespace) -> Thresholds:
    """Thresholds from the flags of :func:`add_arguments` (``OSError``/``ValueError`` if bad)."""
    t = Thresholds(
        args.error_threshold,
        args.timeout_threshold,
        args.quality_threshold,
        min_samples=args.min_samples,
    )
    return t.with_baseline(args.baseline) if args.baseline is not None else t
