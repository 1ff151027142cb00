"""The journal's output files: ``<data_dir>/jobs/<job_id>/``, derived from the rows.

The rows are the truth and the files a copy, so a file that cannot be written
(disk full, a regular file or a planted link where a folder must be) never
keeps a job from ending: the job ends with an ``OUTPUT_ERROR`` naming the
path, its documents stay in the journal and the API, and :class:`WriteHealth`
holds the failure for ``/healthz`` until a write succeeds again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from briefd.config import PipelineSpec
from briefd.messages import ErrorCode, JobResult, PipelineError
from briefd.output import OutputDir, OutputError, sweep_temp_files
from briefd.store.health import WriteHealth

FILES = "output files"
"""The area file failures are reported under."""


class JobFiles:
    """Writes the jobs' files safely (:class:`OutputDir`) and records what fails."""

    def __init__(self, jobs_dir: Path, pipeline: PipelineSpec, health: WriteHealth) -> None:
        self.jobs_dir = jobs_dir
        self._pipeline = pipeline
        self._health = health
        # A job's own pipeline (a daemon serves several): its stages' file names.
        self.pipeline_of: Callable[[str], PipelineSpec | None] = lambda job_id: None

    def write_document(self, job_id: str, stage: str, document: Any) -> None:
        """One stage's file; a failure is only recorded (the job's end tries again)."""
        try:
            with OutputDir.job(self.jobs_dir, job_id) as out:
                out.write_document(self.pipeline_of(job_id) or self._pipeline, stage, document)
        except KeyError:  # a stage the current pipeline lacks: result.json will hold it
            return
        except OutputError as err:
            self._health.failed(FILES, str(err))
            return
        self._health.ok(FILES)

    def write_result(self, result: JobResult) -> PipelineError | None:
        """Every file of the job (each tried); the OUTPUT_ERROR to report if any failed."""
        try:
            with OutputDir.job(self.jobs_dir, result.job_id) as out:
                pipeline = self.pipeline_of(result.job_id) or self._pipeline
                failed = out.write_result(pipeline, result).failed
        except OutputError as err:
            failed = [err]
        if not failed:
            self._health.ok(FILES)
            return None
        self._health.failed(FILES, str(failed[0]))
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return PipelineError(
            stage="*",
            code=ErrorCode.OUTPUT_ERROR,
            message=f"the job's files were not written: {failed[0]}{more}",
            hint=f"the documents are in the journal (GET /v1/jobs/{result.job_id}/result); "
            f"make {self.jobs_dir} a writable folder, not a link, with free space",
        )

    def probe(self) -> bool:
        """Whether a file can be written in ``jobs_dir`` now (made 0700 if missing); recorded."""
        try:
            with OutputDir.private(self.jobs_dir) as jobs:
                jobs.probe()
        except OutputError as err:
            self._health.failed(FILES, str(err))
            return False
        self._health.ok(FILES)
        return True

    def sweep(self) -> None:
        """At start: remove the temporary files a crash left between write and rename."""
        try:
            removed = sweep_temp_files(self.jobs_dir)
        except OutputError as err:
            self._health.failed(FILES, str(err))
            return
        if removed:
            logger.info(
                "removed {} temporary file(s) a crash left in {}", len(removed), self.jobs_dir
            )
