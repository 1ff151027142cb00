"""Reading and checking job input against a pipeline.

Bad input is refused whole, with a message that names the field
(``prompts.PLAYS_MD``, ``models.ANNEX_JSON``, ``deadline_s``) or the file, before
anything runs. A job's ``models`` (per-stage model override) is only checked here
(known stages, non-empty names); what an alias means is the endpoints' business.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ValidationError

from briefd.config import ConfigError, PipelineSpec, StageSpec
from briefd.config.errors import describe_validation
from briefd.llm.routing import Routing
from briefd.messages import JobSpec, SchemaSource
from briefd.pipelines import templates
from briefd.pipelines.registry import PipelineRegistry


def validate_job(
    data: Any, pipeline: PipelineSpec, *, where: str = "job", routing: Routing | None = None
) -> JobSpec:
    """A :class:`JobSpec` with a non-empty prompt for each stage of ``pipeline`` (its own or the
    pipeline's), templates that read only upstream stages (one line per mistake); with
    ``routing``, each model the job names is one it can call (an alias, endpoint:model)."""
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
        prompt = job.prompts.get(name, pipeline.by_name[name].prompt)
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
    if mistakes := templates.check_job(job, pipeline, where):  # names only upstream stages
        raise ConfigError("\n".join(mistakes))
    for name, model in job.models.items():
        if name not in pipeline.by_name:
            raise ConfigError(
                f"{where}: models.{name}: no such stage in pipeline {pipeline.name} "
                f"(stages: {', '.join(pipeline.names)})"
            )
        if not model.strip():
            raise ConfigError(f"{where}: models.{name}: empty model name")
        if routing is not None:
            routing.check(model, f"{where}: models.{name}")
    for name, schema in job.schemas.items():
        stage = pipeline.by_name.get(name)
        if stage is None or stage.kind != "json":
            json_stages = ", ".join(s.name for s in pipeline.stages if s.kind == "json")
            raise ConfigError(
                f"{where}: schemas.{name}: not a JSON stage of pipeline {pipeline.name} "
                f"(JSON stages: {json_stages or 'none'})"
            )
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as err:
            reason = f"invalid JSON schema: {err.message}"
            raise ConfigError(f"{where}: schemas.{name}: {reason}") from None
    return job


def stage_contract(stage: StageSpec, job: JobSpec) -> tuple[StageSpec, SchemaSource]:
    """The stage as this job runs it, with the schema that binds its output, and whose it is.

    The output contract belongs to whoever writes the prompt: the job's schema
    wins, then the pipeline's; a JSON stage with neither accepts any JSON value
    that parses (and asks the server for a JSON object).
    """
    if stage.kind != "json":
        return stage, SchemaSource.NONE
    if stage.name in job.schemas:
        return stage.model_copy(update={"schema_": job.schemas[stage.name]}), SchemaSource.JOB
    if stage.schema_ is not None:
        return stage, SchemaSource.PIPELINE
    return stage, SchemaSource.NONE


def schema_sources(pipeline: PipelineSpec, job: JobSpec) -> dict[str, SchemaSource]:
    """Per JSON stage, the source of the schema its document is checked against."""
    return {s.name: stage_contract(s, job)[1] for s in pipeline.stages if s.kind == "json"}


def load_job_file(path: Path | str, pipeline: PipelineSpec | PipelineRegistry) -> JobSpec:
    """Read a job JSON file; errors name the file. Given a registry, the job is checked
    against the pipeline it names (its ``pipeline``, else the default)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"job file {p}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"job file {p}: invalid JSON: {err}") from None
    where = f"job file {p}"
    spec = pipeline.for_job(data, where) if isinstance(pipeline, PipelineRegistry) else pipeline
    return validate_job(data, spec, where=where)
