"""What a stage does when a stage it depends on failed (on_upstream_failure), over real HTTP
to the simulator: run (the failed upstream reads as empty), skip (UPSTREAM_FAILED, no call),
fallback (its fallback field, no call), and the default (skip when the prompt names a failed
upstream, else run); a fallback document counts as the upstream's output."""

from __future__ import annotations

from typing import Any

import briefd
from briefd.config import PipelineSpec
from briefd.messages import ErrorCode, JobStatus
from briefd.sim.server import Fault, SimServer


def _stage(name: str, deps: list[str], prompt: str, **extra: Any) -> dict[str, Any]:
    kind = "json" if name.endswith("_JSON") else "markdown"
    ext = "json" if kind == "json" else "md"
    return {
        "name": name,
        "output": f"{name.lower()}.{ext}",
        "kind": kind,
        "depends_on": deps,
        "prompt": prompt,
        **extra,
    }


PIPELINE = PipelineSpec.model_validate(
    {
        "name": "upstream",
        "stages": [
            _stage("A_MD", [], "Write A."),
            _stage("B_JSON", [], "Write B.", fallback="procurement_metrics"),
            _stage("RUN_MD", ["A_MD"], "x{{ A_MD }}y", on_upstream_failure="run"),
            _stage("SKIP_MD", ["A_MD"], "No placeholder.", on_upstream_failure="skip"),
            _stage(
                "FALLBACK_JSON",
                ["A_MD"],
                "{{ A_MD }}",
                on_upstream_failure="fallback",
                fallback="procurement_metrics",
            ),
            _stage("NAMED_MD", ["A_MD"], "From {{ A_MD }}"),
            _stage("LITERAL_MD", ["A_MD"], "Ordered after A, reads nothing."),
            _stage("AFTER_FALLBACK_MD", ["B_JSON"], "n={{ B_JSON.n }}"),
        ],
    }
)


def test_each_on_upstream_failure_mode(sim: SimServer, make_settings: Any) -> None:
    sim.inject(Fault(stage="A_MD", status=400, times=None))
    sim.inject(Fault(stage="B_JSON", status=400, times=None))
    job = {"job_id": "up-1", "prompts": {}, "procurement_metrics": {"n": 3}}
    with briefd.Pipeline(make_settings(), pipeline=PIPELINE) as p:
        result = p.submit(job).get(timeout=60)
    calls = sim.stats().by_stage
    docs = result.documents
    errors = {e.stage: e for e in result.errors}
    assert result.status is JobStatus.PARTIAL, result.errors
    assert result.pipeline == PIPELINE.ref
    # run: called, the failed upstream rendered as empty.
    assert calls.get("RUN_MD") == 1 and "- xy" in docs["RUN_MD"]
    # skip (stated): no call, no fallback, UPSTREAM_FAILED naming the upstream.
    assert calls.get("SKIP_MD", 0) == 0 and docs["SKIP_MD"] is None
    assert errors["SKIP_MD"].code is ErrorCode.UPSTREAM_FAILED
    assert "A_MD failed" in errors["SKIP_MD"].message
    # fallback: no call, the stage's fallback field is its document.
    assert calls.get("FALLBACK_JSON", 0) == 0
    assert docs["FALLBACK_JSON"] == {"n": 3} and "FALLBACK_JSON" in result.fallbacks
    assert errors["FALLBACK_JSON"].code is ErrorCode.UPSTREAM_FAILED
    # default, the prompt names the failed upstream: skip.
    assert calls.get("NAMED_MD", 0) == 0 and docs["NAMED_MD"] is None
    assert errors["NAMED_MD"].code is ErrorCode.UPSTREAM_FAILED
    # default, the prompt names nothing: run (the seed's behaviour).
    assert calls.get("LITERAL_MD") == 1 and docs["LITERAL_MD"]
    # an upstream that failed with a fallback document has an output: read, called.
    assert calls.get("AFTER_FALLBACK_MD") == 1 and "n=3" in docs["AFTER_FALLBACK_MD"]
    assert "AFTER_FALLBACK_MD" not in errors


def test_a_resumed_run_gives_a_skipped_stage_no_fallback() -> None:
    """The journal holds a stage's UPSTREAM_FAILED end: a resume fills the fallback only of a
    stage whose on_upstream_failure is fallback, as the run that ended it did; any other
    failure of a stage with a fallback field still falls back (the seed's rule)."""
    from briefd.messages import JobSpec, PipelineError
    from briefd.pipelines.inputs import StageInputs

    inputs = StageInputs(JobSpec(job_id="r", prompts={}), PIPELINE)
    upstream = PipelineError(stage="x", code=ErrorCode.UPSTREAM_FAILED, message="m", hint="")
    crashed = PipelineError(stage="x", code=ErrorCode.SERVER_ERROR, message="m", hint="")
    assert inputs.falls_back("FALLBACK_JSON", upstream)
    assert not inputs.falls_back("B_JSON", upstream)
    assert inputs.falls_back("B_JSON", crashed)
