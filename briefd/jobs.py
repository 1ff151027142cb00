"""Reading and checking job input against a pipeline.

Bad input is refused whole, with a message that names the field
(``prompts.PLAYS_MD``) or the file, before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from briefd.config import ConfigError, PipelineSpec
from briefd.config.errors import describe_validation
from briefd.messages import JobSpec


def validate_job(data: Any, pipeline: PipelineSpec, *, where: str = "job") -> JobSpec:
    """A :class:`JobSpec` with a non-empty prompt for each stage of ``pipeline``."""
    if isinstance(data, JobSpec):
        job = data
    else:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a JSON object, got {type(data).__name__}")
        try:
            job = JobSpec.model_validate(data)
        except ValidationError as err:
            raise ConfigError(describe_validation(err, where=where)) from None
    for name in pipeline.names:
        prompt = job.prompts.get(name)
        if prompt is None:
            raise ConfigError(f"{where}: prompts.{name}: missing (the pipeline declares {name})")
        if not prompt.strip():
            raise ConfigError(f"{where}: prompts.{name}: empty prompt")
    unknown = sorted(set(job.prompts) - set(pipeline.names))
    if unknown:
        raise ConfigError(
            f"{where}: prompts.{unknown[0]}: no such stage in pipeline {pipeline.name} "
            f"(stages: {', '.join(pipeline.names)})"
        )
    return job


def load_job_file(path: Path | str, pipeline: PipelineSpec) -> JobSpec:
    """Read a job JSON file; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"job file {p}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"job file {p}: invalid JSON: {err}") from None
    return validate_job(data, pipeline, where=f"job file {p}")
