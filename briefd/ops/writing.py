"""The console's "writing" table: each streaming stage's tokens so far and its last line.

Built from ``StageProgress`` events (a few a second per stage, :mod:`briefd.actors.stage_progress`)
as folded by the view (:attr:`~briefd.ops.snapshot.JobRow.writing`). The preview is the
model's text, so it is shown as a rich ``Text`` (never parsed as markup: a ``[bold]`` the
model wrote is shown as written) with control characters escaped, on one line.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from briefd.ops.eventlog import escape_control
from briefd.ops.snapshot import Snapshot

PREVIEW_WIDTH = 60


def writing_table(snap: Snapshot, limit: int = 12) -> Table | None:
    """One row per running stage that is streaming, of the first ``limit`` active jobs."""
    rows = [
        (job.job_id, stage, tokens, preview)
        for job in snap.active[:limit]
        for stage, (tokens, preview) in sorted(job.writing.items())
        if job.stages.get(stage) == "running"
    ]
    if not rows:
        return None
    table = Table(title="writing", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("last line so far", no_wrap=True, overflow="ellipsis", max_width=PREVIEW_WIDTH)
    for job_id, stage, tokens, preview in rows:
        line = " ".join(escape_control(preview).split())[-PREVIEW_WIDTH:]
        table.add_row(
            Text(escape_control(job_id)), Text(stage), str(tokens), Text(line, style="dim")
        )
    return table
