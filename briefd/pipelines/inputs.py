"""A stage's input at its start: its prompt rendered from the documents before it, or no call.

The coordinator asks :meth:`StageInputs.plan` once a stage's dependencies have
ended. What happens when one of them failed is stated per stage
(``on_upstream_failure`` in the pipeline file):

* ``run``: the stage is called; a failed upstream its prompt names reads as empty;
* ``skip``: the stage ends ``UPSTREAM_FAILED`` without a call (and without its fallback);
* ``fallback``: the stage ends ``UPSTREAM_FAILED`` without a call, its fallback field
  becoming its document.

Unset, a stage whose prompt names a failed upstream skips (a prompt built on a
missing document is not worth paying for) and any other stage runs: a dependency
that only orders stages does not cancel its dependents, as in the seed. A failed
upstream that has a fallback document has an output: it counts as done.

A prompt is rendered once, at the stage's start; the text is journaled
(``StagePromptRendered``) and a resumed run is handed it back (``rendered``), so a
resume never renders differently, whatever changed meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from briefd.config import PipelineSpec
from briefd.messages import (
    ErrorCode,
    JobSpec,
    PipelineError,
    StageFailed,
    StagePromptRendered,
    StageState,
)
from briefd.pipelines.templates import (
    EMPTY,
    JOB,
    Template,
    TemplateError,
    parse,
    render,
    stage_prompt,
)
from briefd.progress import StageRecord


@dataclass(frozen=True)
class Planned:
    """What a stage does now: call with ``prompt`` (None: the one it holds) or end with
    ``error`` (``fallback``: its fallback field becomes its document)."""

    prompt: str | None = None
    rendered: StagePromptRendered | None = None  # rendered just now: to be journaled
    error: PipelineError | None = None
    fallback: bool = False
    failed: StageFailed | None = None  # the error as the stage's end


class StageInputs:
    """One job's prompts: the raw ones (the job's, else the pipeline's), and those rendered."""

    def __init__(
        self, job: JobSpec, pipeline: PipelineSpec, rendered: Mapping[str, str] | None = None
    ) -> None:
        self._job = job
        self._pipeline = pipeline
        self.rendered: dict[str, str] = dict(rendered or {})
        self._journaled: set[str] = set()  # rendered prompts already told to the journal
        self._templates: dict[str, Template] = {}
        for name in pipeline.names:
            text = stage_prompt(name, pipeline, job)
            if text is not None and (t := parse(text, pipeline.names)) is not None:
                self._templates[name] = t

    def raw(self, name: str) -> str:
        """The stage's prompt as written (a template not yet rendered)."""
        return stage_prompt(name, self._pipeline, self._job) or ""

    def prompt(self, name: str) -> str:
        """The prompt the stage sends: rendered if it was, else as written."""
        return self.rendered.get(name) or self.raw(name)

    def falls_back(self, name: str, error: PipelineError) -> bool:
        """Whether a stage that ended with ``error`` gets its fallback document: always, but
        for an upstream failure, only if its ``on_upstream_failure`` is ``fallback``."""
        if error.code is not ErrorCode.UPSTREAM_FAILED:
            return True
        return self._pipeline.by_name[name].on_upstream_failure == "fallback"

    def reads(self, name: str) -> frozenset[str]:
        """The stages ``name``'s prompt reads."""
        t = self._templates.get(name)
        return t.names - {JOB} if t is not None else frozenset()

    def plan(
        self, name: str, documents: Mapping[str, Any], records: Mapping[str, StageRecord]
    ) -> Planned:
        """``name``'s dependencies have ended (``records``: every stage's state). Render its
        prompt, or say why it is not called."""
        failed = {
            n
            for n, r in records.items()
            if r.state is StageState.FAILED and documents.get(n) is None
        }
        planned = self._plan(name, documents, failed)
        if planned.error is not None:
            end = StageFailed(job_id=self._job.job_id, stage=name, error=planned.error)
            return replace(planned, failed=end)
        if planned.prompt is not None and name not in self._journaled:
            self._journaled.add(name)
            event = StagePromptRendered(job_id=self._job.job_id, stage=name, prompt=planned.prompt)
            return replace(planned, rendered=event)
        return planned

    def _plan(self, name: str, documents: Mapping[str, Any], failed: set[str]) -> Planned:
        spec = self._pipeline.by_name[name]
        named = self.reads(name)
        lost = (set(spec.depends_on) | named) & failed
        mode = spec.on_upstream_failure or ("skip" if named & failed else "run")
        if lost and mode != "run":
            why = f"not called: {', '.join(sorted(lost))} failed (on_upstream_failure: {mode})"
            hint = (
                "its fallback field is its document"
                if mode == "fallback"
                else 'set on_upstream_failure = "run" to call it with the failed stage empty'
            )
            error = PipelineError(
                stage=name, code=ErrorCode.UPSTREAM_FAILED, message=why, hint=hint
            )
            return Planned(error=error, fallback=mode == "fallback")
        if name in self.rendered:  # a resumed run: the prompt as it was journaled
            self._journaled.add(name)
            return Planned(prompt=self.rendered[name])
        template = self._templates.get(name)
        if template is None:
            return Planned()
        context: dict[str, Any] = {
            n: EMPTY if n in failed else documents.get(n) for n in template.names if n != JOB
        }
        context[JOB] = self._job.model_dump(mode="json")
        try:
            text = render(template, context)
        except TemplateError as err:
            error = PipelineError(
                stage=name,
                code=ErrorCode.UPSTREAM_FAILED,
                message=f"prompt template: {err}",
                hint="an upstream document lacks what the template reads; a schema on that "
                "stage makes it required",
            )
            return Planned(error=error, fallback=spec.on_upstream_failure == "fallback")
        self.rendered[name] = text
        return Planned(prompt=text)
