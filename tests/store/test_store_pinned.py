"""A job keeps its pipeline version and its rendered prompts, on every backend."""

from __future__ import annotations

from pathlib import Path

from briefd.messages import JobSpec
from briefd.pipelines.registry import PipelineRegistry
from store.conftest import Backend

EXAMPLES = Path(__file__).parents[2] / "examples" / "pipelines"


def test_a_job_keeps_its_pipeline_and_rendered_prompts(backend: Backend) -> None:
    """The snapshot comes back with the run (whatever the daemon's pipeline is), the first
    rendering of a prompt wins, and the job's stages include those whose prompt is the
    pipeline's (so their documents are journaled too)."""
    memo = PipelineRegistry.read(None, EXAMPLES).get("renewal-memo")
    store = backend.open()
    job = JobSpec(
        job_id="pin-1",
        pipeline="renewal-memo",
        prompts={"ACCOUNT_MD": "Summarise.", "FACTS_JSON": "Extract."},
    )
    _, created = store.add_job(job, pipeline=memo)
    assert created
    store.stage_prompt("pin-1", "RISKS_MD", "first rendering")
    store.stage_prompt("pin-1", "RISKS_MD", "second rendering")
    store.stage_succeeded("pin-1", "MEMO_MD", "# Memo\n", 1)
    run = store.start_run("pin-1")
    assert run.pipeline == memo.snapshot
    assert run.prompts == {"RISKS_MD": "first rendering"}
    assert run.done_stages == {"MEMO_MD": "# Memo\n"}
    info = store.get("pin-1")
    assert info is not None and set(info.stages) == set(memo.names)
    assert (backend.jobs_dir / "pin-1" / "memo.md").read_text(encoding="utf-8") == "# Memo\n"
