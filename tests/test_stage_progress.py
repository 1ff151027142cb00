"""Progress inside a streaming stage: coalesced StageProgress, the job's percent moving with
it, and the console's live preview."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

from rich.console import Console
from test_console_view import rec

from briefd.actors.stage_progress import CAP, INTERVAL_S, ProgressReporter, preview_of
from briefd.api import Pipeline
from briefd.config import PipelineSpec, load_pipeline
from briefd.llm.stream import StreamProgress
from briefd.messages import (
    Event,
    JobStarted,
    JobStatus,
    ProgressChanged,
    StageProgress,
    StageStarted,
    StageState,
    StageSucceeded,
)
from briefd.ops.console import render
from briefd.ops.view import OpsView
from briefd.progress import StageRecord, progress
from briefd.sim.faults import Fault
from briefd.sim.server import SimServer


def test_a_streaming_stage_moves_the_percent_but_never_completes() -> None:
    """Running counts half; streamed, half plus 0.45 x its fraction; only success is whole."""
    pipeline = load_pipeline()
    records = {s.name: StageRecord() for s in pipeline.stages}
    records["BRIEFING_MD"].state = StageState.RUNNING
    weight = pipeline.by_name["BRIEFING_MD"].weight
    total = sum(s.weight for s in pipeline.stages)
    half = progress(pipeline, records).percent
    assert half == round(100 * weight * 0.5 / total, 1)
    moved = progress(pipeline, records, {"BRIEFING_MD": 0.5}).percent
    assert moved == round(100 * weight * (0.5 + 0.45 * 0.5) / total, 1)
    most = progress(pipeline, records, {"BRIEFING_MD": 1.0}).percent
    records["BRIEFING_MD"].state = StageState.COMPLETE
    assert half < moved < most < progress(pipeline, records, {"BRIEFING_MD": 1.0}).percent


def test_reports_are_coalesced_to_a_few_a_second() -> None:
    """Thousands of reads in a burst make one report per interval, the first at once."""
    told: list[Event] = []
    reporter = ProgressReporter("j", "S", 1, 100, told.append)
    stream = StreamProgress()
    started = time.monotonic()
    for i in range(5000):
        stream._parts.append(f"w{i} ")
        stream.tokens += 1
        reporter(stream)
    elapsed = time.monotonic() - started
    assert 1 <= len(told) <= 2 + elapsed / INTERVAL_S
    first = told[0]
    assert isinstance(first, StageProgress) and first.completion_tokens == 1
    assert first.fraction == 0.01
    reporter._last = None  # the next read is past the interval
    reporter(stream)
    last = told[-1]
    assert isinstance(last, StageProgress) and last.fraction == CAP  # 5000 / 100, capped
    assert last.preview.endswith("w4999")


def test_preview_is_the_last_line_one_line_and_short() -> None:
    assert preview_of("first line\nsecond \x1b[2J line\n\n") == "second \\u001b[2J line"
    long = preview_of("x" * 500)
    assert len(long) == 80 and long.startswith("…")


def test_a_streamed_stage_reports_progress_to_the_coordinator(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """A slow stream (a chunk every 50 ms) tells StageProgress a few times a second, its
    tokens rising, its fraction below 1; the job's percent moves before the stage ends
    (max_tokens 30: the simulator's ~20-word answer is most of it)."""
    sim.inject(Fault(stage="BRIEFING_MD", drip_s=0.05))
    events: list[Event] = []
    lock = threading.Lock()

    def observe(event: Event) -> None:
        with lock:
            events.append(event)

    pipeline_spec = load_pipeline()
    short = pipeline_spec.by_name["BRIEFING_MD"].model_copy(update={"max_tokens": 30})
    stages = tuple(short if s.name == "BRIEFING_MD" else s for s in pipeline_spec.stages)
    spec = PipelineSpec(name=pipeline_spec.name, stages=stages)
    with Pipeline(make_settings(), spec, observers=[observe]) as pipeline:
        result = pipeline.submit(make_job()).get(timeout=60)
    assert result.status is JobStatus.SUCCEEDED
    with lock:
        seen = list(events)
    reports = [e for e in seen if isinstance(e, StageProgress) and e.stage == "BRIEFING_MD"]
    done = next(e for e in seen if isinstance(e, StageSucceeded) and e.stage == "BRIEFING_MD")
    assert len(reports) >= 2
    tokens = [r.completion_tokens for r in reports]
    assert tokens == sorted(tokens) and all(0 < r.fraction < 1 for r in reports)
    assert done.usage.completion_tokens >= tokens[-1]
    streamed_for_s = (reports[-1].ts or 0) - (reports[0].ts or 0)
    assert len(reports) <= 2 + streamed_for_s / INTERVAL_S  # coalesced: about 4 a second
    percents = [
        e.progress.percent
        for e in seen[: seen.index(done)]
        if isinstance(e, ProgressChanged) and e.stage == "BRIEFING_MD"
    ]
    assert len(percents) >= 2 and percents == sorted(percents) and percents[-1] > percents[0]


def test_console_shows_tokens_and_a_literal_preview() -> None:
    """A running stage's tokens and last line, shown as text: markup the model wrote is
    printed as written; the row goes when the stage ends."""
    view = OpsView()
    view.apply(rec(JobStarted(job_id="j", stages=["BRIEFING_MD"], parallel=True, max_concurrent=2)))
    view.apply(rec(StageStarted(job_id="j", stage="BRIEFING_MD", attempt=1)))
    hostile = "[bold red]fake[/] \x1b[2J done"
    view.apply(
        rec(
            StageProgress(
                job_id="j",
                stage="BRIEFING_MD",
                attempt=1,
                completion_tokens=123,
                fraction=0.12,
                preview=hostile,
            )
        )
    )
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True).print(render(view.snapshot(), source="x"))
    screen = out.getvalue()
    assert "writing" in screen and "123" in screen
    assert "[bold red]fake[/]" in screen and "\x1b[2J" not in screen
    view.apply(
        rec(
            StageSucceeded(
                job_id="j", stage="BRIEFING_MD", document="# x", elapsed_ms=5, attempts=1
            )
        )
    )
    assert view.snapshot().active[0].writing == {}
