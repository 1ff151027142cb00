"""``briefd pipeline check FILE``: the DAG, its critical path, and dependencies nobody reads.

A ``depends_on`` edge orders two stages; with templated prompts it also carries
data, and an edge no template reads only makes the dependent wait. This command
says which edges those are and what each costs ("ANNEX_JSON depends on
PROCUREMENT_JSON but does not read it: it could start 5.0 s earlier"), over the
critical path computed from each stage's latency:

* *learned*: the median of the stage's time in the past jobs of this pipeline in
  the journal of ``--data-dir`` (default ``BRIEFD_DATA_DIR``), when it has any;
* else *declared*: the stage's ``expected_ms`` in the file;
* else unknown (counted as 0 and said so).

A stage whose prompt comes from each job reads no document unless the job's
prompt is a template: ``--job FILE`` checks that job's prompts too. A bad file
prints one line per mistake and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from briefd.config import ConfigError, PipelineSpec
from briefd.config.settings import default_data_dir
from briefd.jobs import validate_job
from briefd.messages import JobSpec
from briefd.pipelines.inputs import StageInputs
from briefd.pipelines.registry import read_pipeline
from briefd.store import JOURNAL_FILE

RECENT_JOBS = 200
"""Learned latencies come from this many of the pipeline's latest finished jobs."""


def learned_ms(data_dir: Path, *names: str) -> dict[str, int]:
    """Per stage, the median time of the pipeline's recent jobs in the journal (ms); the
    pipeline as jobs named it (its file's name, or the ``name`` inside)."""
    path = data_dir / JOURNAL_FILE
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return {}
    times: dict[str, list[int]] = {}
    try:
        rows = db.execute(
            "SELECT result FROM jobs WHERE result IS NOT NULL AND substr(json_extract("
            "result, '$.pipeline'), 1, instr(json_extract(result, '$.pipeline'), '@') - 1) "
            f"IN ({', '.join('?' * len(names))}) ORDER BY seq DESC LIMIT ?",
            (*names, RECENT_JOBS),
        ).fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        db.close()
    for (text,) in rows:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            for stage, ms in json.loads(text)["metrics"]["stages_ms"].items():
                if isinstance(ms, int) and ms > 0:
                    times.setdefault(stage, []).append(ms)
    return {stage: int(statistics.median(v)) for stage, v in times.items()}


def latencies(
    pipeline: PipelineSpec, learned: Mapping[str, int]
) -> dict[str, tuple[int | None, str]]:
    """Per stage, ``(ms, "learned" | "declared" | "unknown")``."""
    out: dict[str, tuple[int | None, str]] = {}
    for s in pipeline.stages:
        if s.name in learned:
            out[s.name] = (learned[s.name], "learned")
        elif s.expected_ms is not None:
            out[s.name] = (s.expected_ms, "declared")
        else:
            out[s.name] = (None, "unknown")
    return out


def schedule(pipeline: PipelineSpec, ms: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """Each stage's earliest finish with unlimited tokens, and the critical path."""
    finish: dict[str, int] = {}
    for name in pipeline.order:
        deps = pipeline.by_name[name].depends_on
        finish[name] = max((finish[d] for d in deps), default=0) + ms[name]
    path = [max(pipeline.order, key=lambda n: finish[n])] if finish else []
    while deps := pipeline.by_name[path[-1]].depends_on:
        path.append(max(deps, key=lambda d: finish[d]))
    return finish, path[::-1]


def unused_edges(
    pipeline: PipelineSpec, inputs: StageInputs, finish: Mapping[str, int]
) -> list[tuple[str, str, int]]:
    """``(stage, dependency, ms it could start earlier)`` for each edge its prompt does not
    read (directly or through a stage it reads)."""
    found = []
    for s in pipeline.stages:
        reads = inputs.reads(s.name)
        needed = set(reads).union(*(pipeline.upstream[r] for r in reads))
        for dep in s.depends_on:
            if dep in needed:
                continue
            start = max(finish[d] for d in s.depends_on)
            without = max((finish[d] for d in s.depends_on if d != dep), default=0)
            found.append((s.name, dep, start - without))
    return found


def report(pipeline: PipelineSpec, where: str, job: JobSpec | None, learned: dict[str, int]) -> str:
    """The check's text."""
    inputs = StageInputs(job or _blank(pipeline), pipeline)
    lat = latencies(pipeline, learned)
    ms = {n: v or 0 for n, (v, _) in lat.items()}
    finish, path = schedule(pipeline, ms)
    width = max(len(n) for n in pipeline.names)
    lines = [f"pipeline {pipeline.ref} ({where}): {len(pipeline.stages)} stages", ""]
    for name in pipeline.order:
        s = pipeline.by_name[name]
        value, source = lat[name]
        took = f"{value / 1000:5.1f} s {source}" if value is not None else "    ? s unknown"
        deps = f"<- {', '.join(s.depends_on)}" if s.depends_on else "(starts at once)"
        reads = inputs.reads(name)
        prompt = "its prompt: the job's" if s.prompt is None and job is None else "reads "
        prompt = prompt + (", ".join(sorted(reads)) if prompt == "reads " else "")
        if prompt == "reads ":
            prompt = "reads no document"
        lines.append(f"  {name:<{width}}  {s.kind:<8}  {took:<16}  {deps}; {prompt}")
    total = finish[path[-1]] if path else 0
    lines += ["", f"critical path: {' -> '.join(path)}: {total / 1000:.1f} s"]
    unknown = [n for n, (v, _) in lat.items() if v is None]
    if unknown:
        lines.append(
            f"  (latency unknown for {', '.join(unknown)}, counted as 0: declare expected_ms, "
            "or run jobs and pass --data-dir)"
        )
    unused = unused_edges(pipeline, inputs, finish)
    lines += ["", "dependencies no template reads:" if unused else "every dependency is read."]
    for stage, dep, saved in unused:
        earlier = f"{saved / 1000:.1f} s" if saved >= 1000 else f"{saved} ms"
        gain = f"it could start {earlier} earlier" if saved > 0 else "no stage would start sooner"
        lines.append(f"  {stage} depends on {dep} but does not read it: {gain}")
    if unused and job is None and any(pipeline.by_name[s].prompt is None for s, _, _ in unused):
        lines.append(
            "  (a stage whose prompt comes from each job reads nothing unless the job's prompt "
            "is a template: --job FILE checks a job's)"
        )
    return "\n".join(lines)


def _blank(pipeline: PipelineSpec) -> JobSpec:
    """A job with no prompts of its own: only the pipeline's templates are read."""
    return JobSpec.model_construct(job_id="check", prompts={})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="briefd pipeline",
        description="Check a pipeline file: print its DAG, its critical path (learned or "
        "declared stage latencies) and the depends_on edges no template reads. Exit 2 with "
        "one line per mistake on a bad file.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="check a pipeline TOML file")
    check.add_argument("file", type=Path, help="the pipeline TOML file")
    check.add_argument("--job", type=Path, help="also read this job's prompts as templates")
    check.add_argument(
        "--data-dir",
        type=Path,
        help="learn stage latencies from this daemon's journal (default: BRIEFD_DATA_DIR)",
    )
    args = parser.parse_args(argv)
    spec, mistakes = read_pipeline(args.file, args.file.stem)
    if spec is None:
        raise ConfigError("\n".join(mistakes))
    job = None
    if args.job is not None:
        job = _read_job(args.job, spec)
    env = os.environ.get("BRIEFD_DATA_DIR")
    data_dir = args.data_dir or (Path(env) if env else default_data_dir())
    names = {spec.name, str(_declared_name(args.file) or spec.name)}
    print(report(spec, str(args.file), job, learned_ms(data_dir, *sorted(names))))
    return 0


def _declared_name(path: Path) -> Any:
    """The ``name`` inside the file (the built-in's is briefing-pack), or None."""
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        return tomllib.loads(path.read_text(encoding="utf-8")).get("name")
    return None


def _read_job(path: Path, spec: PipelineSpec) -> JobSpec:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"job file {path}: {err}") from None
    if isinstance(data, dict):
        data = {**data, "pipeline": None}  # checked against this file, whatever it names
    return validate_job(data, spec, where=f"job file {path}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
