"""The console's job rows name each job's tenant once tenants are in the log."""

from __future__ import annotations

import io

from rich.console import Console

from briefd.messages import Event, JobAccepted, JobState
from briefd.ops.console import render
from briefd.ops.eventlog import Record, dumps_line, event_payload, level_for, line_of, parse_line
from briefd.ops.view import OpsView


def rec(event: Event) -> Record:
    record = parse_line(dumps_line(line_of(event_payload(event), level_for(event.type), "")))
    assert record is not None
    return record


def screen(view: OpsView) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(render(view.snapshot(), source="log", title="t"))
    return out.getvalue()


def test_job_rows_carry_the_tenant() -> None:
    view = OpsView()
    view.apply(rec(JobAccepted(job_id="acme-q3", status=JobState.QUEUED, queued=1)))
    assert "tenant" not in screen(view), "one tenant: the table as before"
    view.apply(rec(JobAccepted(job_id="beta.acme-q3", status=JobState.QUEUED, queued=2)))
    lines = screen(view).splitlines()
    header = next(line for line in lines if "job" in line and "state" in line)
    assert "tenant" in header
    rows = [line.split("│")[1:3] for line in lines if "acme-q3" in line]
    assert sorted((job.strip(), tenant.strip()) for job, tenant in rows) == [
        ("acme-q3", "beta"),
        ("acme-q3", "default"),
    ]
