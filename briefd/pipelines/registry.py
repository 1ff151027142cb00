"""The pipelines one daemon (or one in-process ``Pipeline``) serves, by name.

* the built-in briefing pack, always, as ``briefing-pack``;
* ``BRIEFD_PIPELINE`` (one file), under its file name without ``.toml``; it is the
  default of jobs that name no pipeline (else the built-in is);
* every ``NAME.toml`` of the folder ``BRIEFD_PIPELINES``, as ``NAME``.

A pipeline's name is its file's (the ``name`` key inside is overridden), and its
version a hash of its content, schema files included (:attr:`PipelineSpec.version`):
a job's journal row keeps the pipeline it was accepted with, so a resume after the
file changed (or a SIGHUP reloaded the folder) runs the version it started with.

Everything is checked when the registry is made, each mistake on its own line
(:class:`~briefd.config.ConfigError`, whose message then has several lines): the
daemon refuses to start (exit 2), and a SIGHUP that finds a broken file logs the
lines and keeps the pipelines it had.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import ValidationError

from briefd.config import ConfigError, PipelineSpec, Settings, StageSpec
from briefd.config.pipeline import DEFAULT_PIPELINE, _read_schema
from briefd.llm.extract import check_schema
from briefd.pipelines.templates import check_pipeline

BUILT_IN = "briefing-pack"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as JobSpec.pipeline


def read_pipeline(
    path: Path | None, name: str | None = None
) -> tuple[PipelineSpec | None, list[str]]:
    """One pipeline file (None: the built-in), named ``name``; or its mistakes, one line each."""
    if path is None:
        where = f"built-in pipeline {DEFAULT_PIPELINE}"
        text = resources.files("briefd.config").joinpath(DEFAULT_PIPELINE).read_text("utf-8")
        base: Any = resources.files("briefd.config")
    else:
        where = f"pipeline file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            return None, [f"{where}: cannot read: {err.strerror or err}"]
        base = path.parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return None, [f"{where}: invalid TOML: {err}"]
    if name is not None:
        data["name"] = name
    mistakes: list[str] = []
    for i, stage in enumerate(data.get("stages") or []):
        if isinstance(stage, dict) and isinstance(stage.get("schema_file"), str):
            try:
                stage["schema"] = _read_schema(base, stage["schema_file"], f"{where}: stages.{i}")
            except ConfigError as err:
                mistakes.append(str(err))
    if mistakes:
        return None, mistakes
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as err:
        return None, [
            f"{where}: {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors(include_url=False, include_input=False)
        ]
    mistakes = check_pipeline(spec, where)
    for stage in spec.stages:
        try:
            check_schema(stage)
        except ConfigError as err:
            mistakes.append(f"{where}: {err}")
    return (None, mistakes) if mistakes else (spec, [])


def reload_pipelines(current: PipelineRegistry, default_file: Path | None) -> PipelineRegistry:
    """SIGHUP: the folder read again; a broken file is logged (one line per mistake) and the
    current pipelines kept, whole: a half-applied folder is worse than an old one."""
    try:
        return current.successor(current.reload(default_file))
    except ConfigError as err:
        for line in str(err).splitlines():
            logger.error("pipelines not reloaded: {}", line)
        return current


def from_snapshot(snapshot: str) -> PipelineSpec:
    """A pipeline back from a journal's snapshot (:attr:`PipelineSpec.snapshot`)."""
    return PipelineSpec.model_validate(json.loads(snapshot))


@dataclass(frozen=True)
class PipelineRegistry:
    """Pipelines by name, and the default; immutable: a reload makes a new one."""

    pipelines: Mapping[str, PipelineSpec]
    default: str = BUILT_IN
    folder: Path | None = None
    _by_version: dict[str, PipelineSpec] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self._by_version.update({p.version: p for p in self.pipelines.values()})

    @classmethod
    def single(cls, spec: PipelineSpec) -> PipelineRegistry:
        """A registry of one pipeline (the in-process API given a spec, tests)."""
        name = spec.name if NAME.match(spec.name) else BUILT_IN
        if mistakes := check_pipeline(spec, f"pipeline {spec.name}"):
            raise ConfigError("\n".join(mistakes))
        return cls({name: spec}, default=name)

    @classmethod
    def load(cls, settings: Settings) -> PipelineRegistry:
        """The built-in, ``settings.pipeline`` and the folder ``settings.pipelines``, checked;
        ConfigError with one line per mistake."""
        return cls.read(settings.pipeline, settings.pipelines)

    @classmethod
    def read(cls, default_file: Path | None, folder: Path | None) -> PipelineRegistry:
        mistakes: list[str] = []
        found: dict[str, PipelineSpec] = {}
        files: dict[str, Path] = {}
        built_in, errs = read_pipeline(None, BUILT_IN)
        mistakes += errs
        if built_in is not None:
            found[BUILT_IN] = built_in
        if folder is not None:
            if not folder.is_dir():
                raise ConfigError(f"BRIEFD_PIPELINES {folder}: not a folder")
            for path in sorted(folder.glob("*.toml")):
                files[path.stem] = path
        default = BUILT_IN
        if default_file is not None:
            default = default_file.stem
            known = files.get(default)
            if known is not None and known.resolve() != default_file.resolve():
                mistakes.append(
                    f"BRIEFD_PIPELINE {default_file}: its name {default} is also {known} "
                    "(one name, one file)"
                )
            files[default] = default_file
        for name, path in files.items():
            if not NAME.match(name):
                mistakes.append(f"pipeline file {path}: the name {name!r} is not [A-Za-z0-9_.-]")
                continue
            if name == BUILT_IN:
                mistakes.append(f"pipeline file {path}: {BUILT_IN} is the built-in's name")
                continue
            spec, errs = read_pipeline(path, name)
            mistakes += errs
            if spec is not None:
                found[name] = spec
        if mistakes:
            raise ConfigError("\n".join(mistakes))
        return cls(found, default=default, folder=folder)

    def reload(self, default_file: Path | None) -> PipelineRegistry:
        """The folder read again (ConfigError: keep this one)."""
        return self.read(default_file, self.folder)

    @property
    def stages(self) -> list[StageSpec]:
        """Every pipeline's stages (what the endpoints are checked against)."""
        return [s for p in self.pipelines.values() for s in p.stages]

    @property
    def names(self) -> list[str]:
        return sorted(self.pipelines)

    @property
    def default_spec(self) -> PipelineSpec:
        return self.pipelines[self.default]

    def get(self, name: str | None, where: str = "job") -> PipelineSpec:
        """The pipeline ``name`` (None: the default); ConfigError naming ``pipeline``."""
        spec = self.pipelines.get(name or self.default)
        if spec is None:
            raise ConfigError(
                f"{where}: pipeline: no pipeline {name!r} (known: {', '.join(self.names)})"
            )
        return spec

    def for_job(self, data: Any, where: str = "job") -> PipelineSpec:
        """The pipeline a job (a dict or JobSpec) names; the default if none."""
        name = data.get("pipeline") if isinstance(data, dict) else getattr(data, "pipeline", None)
        if name is not None and not isinstance(name, str):
            return self.default_spec  # validate_job names the bad field
        return self.get(name, where)

    def by_version(self, version: str) -> PipelineSpec | None:
        """A pipeline of this registry (or one it replaced) by content hash."""
        return self._by_version.get(version)

    def pinned(self, snapshot: str, name: str | None) -> PipelineSpec:
        """The pipeline a job was accepted with (its journal's ``snapshot``); a job with none
        kept (accepted before pipelines were named) runs the current one of its name."""
        if not snapshot:
            return self.get(name)
        version = hashlib.sha256(snapshot.encode("utf-8")).hexdigest()[:12]  # as .version
        known = self._by_version.get(version)
        if known is None:
            self._by_version[version] = known = from_snapshot(snapshot)
        return known

    def changes(self, newer: PipelineRegistry) -> dict[str, str]:
        """What a reload changed: ``{"pipeline NAME": "old -> new"}`` (versions; '-': none)."""
        out = {}
        for name in sorted(set(self.pipelines) | set(newer.pipelines)):
            old, new = self.pipelines.get(name), newer.pipelines.get(name)
            if (old and old.version) != (new and new.version):
                out[f"pipeline {name}"] = f"{old.version if old else '-'} -> " + (
                    new.version if new else "-"
                )
        return out

    def successor(self, newer: PipelineRegistry) -> PipelineRegistry:
        """``newer``, still knowing this one's versions (jobs may run them)."""
        merged = PipelineRegistry(newer.pipelines, newer.default, newer.folder)
        merged._by_version.update(self._by_version)
        merged._by_version.update(newer._by_version)
        return merged

    def describe(self) -> list[dict[str, Any]]:
        """``GET /v1/pipelines``: each pipeline with its stages."""
        return [
            {
                "name": name,
                "version": spec.version,
                "default": name == self.default,
                "stages": [
                    {
                        "name": s.name,
                        "kind": s.kind,
                        "output": s.output,
                        "depends_on": list(s.depends_on),
                        "templated": s.prompt is not None,
                        "on_upstream_failure": s.on_upstream_failure,
                    }
                    for s in spec.stages
                ],
            }
            for name, spec in sorted(self.pipelines.items())
        ]
