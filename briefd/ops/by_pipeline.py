"""The console's and ``briefd report``'s figures per pipeline: a daemon serves several.

Each finished job's result names the pipeline it ran (``name@version``); jobs are
counted by name (status, versions seen, p50/p95 total time, spend). A result from
before pipelines were named names none and is left out, so an old log reads as it did.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.text import Text

from briefd.actors.metrics import LatencySummary


class PipelineTally:
    """Finished jobs per pipeline; ``window_s`` bounds the latency figures as the console's."""

    def __init__(self, window_s: float | None = None) -> None:
        self.window_s = window_s
        self._jobs: dict[str, Counter[str]] = {}
        self._versions: dict[str, set[str]] = {}
        self._ms: dict[str, list[tuple[float, int]]] = {}
        self._usd: dict[str, float] = {}

    def add(self, ts: float, result: dict[str, Any]) -> None:
        """One ``JobCompleted`` result."""
        ref = result.get("pipeline")
        if not isinstance(ref, str) or not ref:
            return
        name, _, version = ref.partition("@")
        self._jobs.setdefault(name, Counter())[str(result.get("status") or "unknown")] += 1
        self._versions.setdefault(name, set()).add(version)
        metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
        total = metrics.get("total_ms") if isinstance(metrics, dict) else None
        if isinstance(total, int) and total > 0:
            self._ms.setdefault(name, []).append((ts, total))
        usd = result.get("total_cost_usd")
        if isinstance(usd, int | float) and not isinstance(usd, bool):
            self._usd[name] = self._usd.get(name, 0.0) + usd

    def summary(self, newest: float) -> dict[str, dict[str, Any]]:
        """Per pipeline: jobs, by status, versions seen, p50/p95 total time, USD."""
        out = {}
        for name, by_status in sorted(self._jobs.items()):
            since = newest - self.window_s if self.window_s else float("-inf")
            ms = [v for ts, v in self._ms.get(name, []) if ts >= since]
            total = LatencySummary.of(ms)
            out[name] = {
                "jobs": sum(by_status.values()),
                "by_status": dict(by_status),
                "versions": sorted(self._versions[name]),
                "total_p50_ms": total.p50_ms,
                "total_p95_ms": total.p95_ms,
                "cost_usd": round(self._usd.get(name, 0.0), 6),
            }
        return out


def pipelines_line(pipelines: dict[str, dict[str, Any]]) -> Text | None:
    """One line for the console: each pipeline's jobs, statuses and p50 total."""
    if not pipelines:
        return None
    text = Text("pipelines ", style="bold")
    for i, (name, row) in enumerate(pipelines.items()):
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(row["by_status"].items()))
        versions = len(row["versions"])
        text.append(("  " if i else "") + name, style="cyan")
        text.append(
            f" {row['jobs']} job{'s' if row['jobs'] != 1 else ''} ({statuses}), "
            f"p50 {row['total_p50_ms'] / 1000:.1f} s"
            + (f", {versions} versions" if versions > 1 else "")
        )
    return text
