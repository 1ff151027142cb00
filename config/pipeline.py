"""The pipeline: which stages make a job, what each produces, and what waits for what.

A pipeline is declared in TOML (``config/pipeline.toml`` is the seed's
briefing pack) and checked once at load: duplicate stages, unknown
dependencies and cycles are refused with a message that names them, so a bad
file never reaches the actors.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from briefd.config.errors import ConfigError, describe_validation

DEFAULT_PIPELINE = "pipeline.toml"


class StageSpec(BaseModel):
    """One stage: one API call that yields one document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    output: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    kind: Literal["markdown", "json"]
    weight: float = Field(default=1.0, ge=0)
    depends_on: tuple[str, ...] = ()
    system: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    schema_file: str | None = None
    response_format: Literal["json_schema", "json_object", "none"] | None = Field(
        default=None, description="How JSON is requested; unset: BRIEFD_RESPONSE_FORMAT."
    )
    fallback: str | None = Field(default=None, description="Job field used when the stage fails.")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra request fields; sent only to endpoints of kind compatible (the "
        "OpenAI API refuses what it does not document).",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="A model alias of BRIEFD_ENDPOINTS (or endpoint:model); unset: BRIEFD_MODEL.",
    )
    prompt: str | None = Field(
        default=None,
        min_length=1,
        description="The stage's prompt when a job gives none: a template that may read the "
        "documents of stages it depends on (briefd/pipelines/templates.py).",
    )
    on_upstream_failure: Literal["run", "skip", "fallback"] | None = Field(
        default=None,
        description="When a stage it depends on failed: run (a failed upstream reads as empty), "
        "skip (UPSTREAM_FAILED, no call) or fallback (its fallback field, no call). Unset: skip "
        "when its prompt names a failed upstream, else run.",
    )
    expected_ms: int | None = Field(
        default=None, ge=0, description="Declared latency, for `briefd pipeline check`."
    )

    @model_validator(mode="after")
    def _checks(self) -> StageSpec:
        if self.output == "result.json":
            raise ValueError("output 'result.json' is reserved for the job result")
        if self.kind == "markdown" and (self.schema_ or self.schema_file):
            raise ValueError("a markdown stage cannot have a JSON schema")
        if self.on_upstream_failure == "fallback" and not self.fallback:
            raise ValueError('on_upstream_failure "fallback" needs a fallback field')
        return self


class PipelineSpec(BaseModel):
    """The whole DAG of stages, validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "pipeline"
    stages: tuple[StageSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_graph(self) -> PipelineSpec:
        seen: set[str] = set()
        outputs: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"duplicate stage {s.name}")
            if s.output in outputs:
                raise ValueError(f"stage {s.name}: output {s.output} is used twice")
            seen.add(s.name)
            outputs.add(s.output)
        for s in self.stages:
            for dep in s.depends_on:
                if dep not in seen:
                    raise ValueError(f"stage {s.name} depends on unknown stage {dep}")
                if dep == s.name:
                    raise ValueError(f"stage {s.name} depends on itself")
        cycle = _find_cycle({s.name: s.depends_on for s in self.stages})
        if cycle:
            raise ValueError("dependency cycle: " + " -> ".join(cycle))
        return self

    def stage(self, name: str) -> StageSpec:
        return self.by_name[name]

    @cached_property
    def by_name(self) -> dict[str, StageSpec]:
        return {s.name: s for s in self.stages}

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @cached_property
    def order(self) -> tuple[str, ...]:
        """A topological order; ties keep the file's order (the sequential rollback runs this)."""
        done: list[str] = []
        left = list(self.names)
        while left:
            for name in left:
                if all(d in done for d in self.by_name[name].depends_on):
                    done.append(name)
                    left.remove(name)
                    break
        return tuple(done)

    @cached_property
    def remaining_path(self) -> dict[str, int]:
        """Stages on the longest path from each stage to the end, itself included."""
        dependents: dict[str, list[str]] = {n: [] for n in self.names}
        for s in self.stages:
            for d in s.depends_on:
                dependents[d].append(s.name)
        length: dict[str, int] = {}
        for name in reversed(self.order):
            length[name] = 1 + max((length[c] for c in dependents[name]), default=0)
        return length

    @cached_property
    def snapshot(self) -> str:
        """The pipeline as canonical JSON (schema files inlined): what a job's journal row
        keeps, so a resume runs the version the job started with."""
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)

    @cached_property
    def version(self) -> str:
        """A content hash: any change to a stage, a prompt or a schema is a new version."""
        return hashlib.sha256(self.snapshot.encode("utf-8")).hexdigest()[:12]

    @property
    def ref(self) -> str:
        """``name@version``, as a job's result names the pipeline it ran."""
        return f"{self.name}@{self.version}"

    @cached_property
    def upstream(self) -> dict[str, frozenset[str]]:
        """Each stage's transitive dependencies: the stages its prompt may read."""
        found: dict[str, frozenset[str]] = {}
        for name in self.order:
            deps = self.by_name[name].depends_on
            found[name] = frozenset(deps).union(*(found[d] for d in deps))
        return found

    @cached_property
    def roots(self) -> tuple[str, ...]:
        """Stages with no dependencies: the parallel group."""
        return tuple(s.name for s in self.stages if not s.depends_on)


def _find_cycle(deps: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in the dependency graph as a list of names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in deps.get(n, ()):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in deps:
        if n not in state and (found := visit(n)):
            return found
    return None


def load_pipeline(path: Path | str | None = None) -> PipelineSpec:
    """Read and check a pipeline TOML file (default: the built-in briefing pack).

    Schema files named by ``schema_file`` are read relative to the pipeline file.
    """
    if path is None:
        ref = resources.files("briefd.config").joinpath(DEFAULT_PIPELINE)
        where = f"built-in pipeline {DEFAULT_PIPELINE}"
        text = ref.read_text(encoding="utf-8")
        base: Any = resources.files("briefd.config")
    else:
        p = Path(path)
        where = f"pipeline file {p}"
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{where}: {err.strerror or err}") from None
        base = p.parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: invalid TOML: {err}") from None
    stages = data.get("stages")
    if isinstance(stages, list):
        for i, stage in enumerate(stages):
            if isinstance(stage, dict) and isinstance(stage.get("schema_file"), str):
                stage["schema"] = _read_schema(base, stage["schema_file"], f"{where}: stages.{i}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation(err, where=where)) from None


def _read_schema(base: Any, name: str, where: str) -> dict[str, Any]:
    try:
        text = base.joinpath(name).read_text(encoding="utf-8")
        schema = json.loads(text)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}.schema_file {name}: {err}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}.schema_file {name}: a JSON schema must be an object")
    return schema
