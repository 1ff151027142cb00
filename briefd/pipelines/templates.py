"""Templated prompts: a stage's prompt may read the documents of the stages it depends on.

A prompt is rendered by Jinja2 in its sandbox (``SandboxedEnvironment``, with
``StrictUndefined``: a name or field that is not there is an error, never an
empty string), not by hand-written substitution::

    {{ BRIEFING_MD }}               the text of a Markdown document
    {{ PROCUREMENT_JSON }}          the JSON text of a JSON document
    {{ PROCUREMENT_JSON.vendors }}  a field path into a JSON document (JSON text if not a string)
    {{ job.procurement_metrics }}   a field of the job

**Which prompts are templates.** Pre-composed prompts must reach the server exactly
as today, and a client's text may well contain ``{{`` (a Mustache snippet, a code
sample). So a prompt is a template only when it parses as Jinja *and* names one of
its pipeline's stages or ``job``; any other prompt is literal, whatever braces it
holds (``{SUMMARY_MD}`` with single braces always is). Once a prompt is a template,
every name in it must be a stage it (transitively) depends on, or ``job``: anything
else is refused when the pipeline or the job is loaded, naming the stage and the
placeholder. A name reaching Python internals (``''.__class__``) is refused then
too, and the sandbox refuses it again at render time.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, meta, nodes
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from briefd.config import PipelineSpec
from briefd.messages import JobSpec

JOB = "job"
_MARKS = ("{{", "{%", "{#")
MAX_PROMPT_CHARS = 2_000_000
"""A rendered prompt longer than this is refused (a loop in a template could make any size)."""


class TemplateError(ValueError):
    """A template that cannot render: a missing field, a refused attribute. One line."""


class Empty:
    """A failed upstream rendered as empty (``on_upstream_failure = "run"``): every field
    of it is empty too, so ``{{ X.vendors }}`` renders ``""`` rather than failing."""

    def __str__(self) -> str:
        return ""

    def __bool__(self) -> bool:
        return False

    def __iter__(self) -> Any:
        return iter(())


EMPTY = Empty()


def _finalize(value: Any) -> Any:
    """What ``{{ x }}`` prints: text as is, a failed upstream as nothing, JSON as JSON text."""
    if isinstance(value, str | Empty):
        return value
    if isinstance(value, Undefined):
        return str(value)  # StrictUndefined: raises, naming what is missing
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, indent=2)


class _Env(SandboxedEnvironment):
    """The sandbox, where ``X.items`` is a JSON document's field ``items`` before dict.items."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Empty):
            return obj
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Empty):
            return obj
        return super().getitem(obj, argument)


ENV = _Env(
    undefined=StrictUndefined, finalize=_finalize, autoescape=False, keep_trailing_newline=True
)


@dataclass(frozen=True)
class Template:
    """A parsed prompt: the names it reads and, per name, the placeholders that read them."""

    text: str
    refs: Mapping[str, tuple[str, ...]]  # name -> placeholders ("PROCUREMENT_JSON.vendors")
    internals: tuple[str, ...] = ()  # placeholders that reach for _private attributes
    syntax: str | None = None  # a template that does not parse (it names a stage: not literal)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.refs)


def parse(text: str, known: Iterable[str]) -> Template | None:
    """``text`` as a template, or None when it is a literal prompt (see the module's rule)."""
    if not any(mark in text for mark in _MARKS):
        return None
    return _parse(text, tuple(known))


@functools.lru_cache(maxsize=512)
def _parse(text: str, known: tuple[str, ...]) -> Template | None:
    """Parsed once per (text, pipeline): every job of a pipeline shares its templates."""
    try:
        ast = ENV.parse(text)
    except TemplateSyntaxError as err:
        # Not Jinja: a literal prompt that happens to hold braces; unless it plainly meant a
        # placeholder of this pipeline ("{{ BRIEFING_MD }" with a brace missing).
        pattern = "|".join(re.escape(n) for n in (*known, JOB))
        if re.search(rf"{{[{{%]-?\s*(?:{pattern})\b", text):
            return Template(text, {}, syntax=f"line {err.lineno}: {err.message}")
        return None
    names = meta.find_undeclared_variables(ast)
    if not names & (set(known) | {JOB}):
        return None
    refs: dict[str, list[str]] = {n: [] for n in sorted(names)}
    internals: list[str] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        attr = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attr = str(node.arg.value)
        path = _path(node)
        if attr is not None and attr.startswith("_"):
            internals.append(".".join(path) if path else f"...{attr}")
        if path is None or path[0] not in refs:
            continue
        dotted = ".".join(path)
        if dotted not in refs[path[0]]:
            refs[path[0]].append(dotted)
    return Template(text, {n: _longest(p) or (n,) for n, p in refs.items()}, _longest(internals))


def _longest(paths: list[str]) -> tuple[str, ...]:
    """Only the longest path of each chain is worth naming: its prefixes are dropped."""
    return tuple(dict.fromkeys(p for p in paths if not any(q.startswith(p + ".") for q in paths)))


def _path(node: nodes.Node) -> list[str] | None:
    """``A.b.c`` / ``A['b']`` as ``["A", "b", "c"]``; None for anything else."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            parts.append(str(node.arg.value))
            node = node.node
        elif isinstance(node, nodes.Name):
            if node.ctx != "load":
                return None
            return [node.name, *reversed(parts)]
        else:
            return None


def check(template: Template, stage: str, pipeline: PipelineSpec, where: str) -> list[str]:
    """Every mistake of ``stage``'s template, one line each: a name it may not read, a field of a
    Markdown document, a job field that does not exist, a reach for Python internals."""
    if template.syntax is not None:
        return [f"{where}: not a valid template ({template.syntax})"]
    mistakes: list[str] = []
    allowed = pipeline.upstream.get(stage, frozenset())
    deps = ", ".join(pipeline.by_name[stage].depends_on) or "none"
    for placeholder in template.internals:
        mistakes.append(
            f"{where}: {{{{ {placeholder} }}}} reaches for Python internals: refused "
            "(templates read documents and job fields only)"
        )
    for name, all_placeholders in template.refs.items():
        placeholders = [p for p in all_placeholders if p not in template.internals]
        if not placeholders:
            continue
        shown = f"{{{{ {placeholders[0]} }}}}"
        if name == JOB:
            for p in placeholders:
                field = p.split(".")[1] if "." in p else None
                if field is not None and field not in JobSpec.model_fields:
                    mistakes.append(f"{where}: {{{{ {p} }}}}: the job has no field {field}")
            continue
        if name not in pipeline.by_name:
            mistakes.append(
                f"{where}: {shown} names {name}, not a stage of pipeline {pipeline.name} "
                f"(stages: {', '.join(pipeline.names)})"
            )
        elif name not in allowed:
            mistakes.append(
                f"{where}: {shown} reads stage {name}, which {stage} does not depend on "
                f"(depends_on: {deps}); add it to depends_on or drop the placeholder"
            )
        elif pipeline.by_name[name].kind == "markdown" and any("." in p for p in placeholders):
            bad = next(p for p in placeholders if "." in p)
            mistakes.append(
                f"{where}: {{{{ {bad} }}}}: {name} is a Markdown document, it has no fields"
            )
    return mistakes


def stage_prompt(stage: str, pipeline: PipelineSpec, job: JobSpec | None) -> str | None:
    """The prompt ``stage`` runs: the job's, else the pipeline's (None: neither has one)."""
    if job is not None and stage in job.prompts:
        return job.prompts[stage]
    return pipeline.by_name[stage].prompt


def check_pipeline(pipeline: PipelineSpec, where: str) -> list[str]:
    """The mistakes of the pipeline's own prompt templates, one line each."""
    mistakes: list[str] = []
    for s in pipeline.stages:
        if s.prompt is not None and (t := parse(s.prompt, pipeline.names)) is not None:
            mistakes += check(t, s.name, pipeline, f"{where}: stages.{s.name}.prompt")
    return mistakes


def check_job(job: JobSpec, pipeline: PipelineSpec, where: str) -> list[str]:
    """The mistakes of the job's prompts read as templates, one line each."""
    mistakes: list[str] = []
    for name, text in job.prompts.items():
        if name in pipeline.by_name and (t := parse(text, pipeline.names)) is not None:
            mistakes += check(t, name, pipeline, f"{where}: prompts.{name}")
    return mistakes


@functools.lru_cache(maxsize=256)
def _compiled(text: str) -> JinjaTemplate:
    """Compiled once per text: many jobs share a pipeline's templates."""
    return ENV.from_string(text)


def render(template: Template, context: Mapping[str, Any]) -> str:
    """The prompt with its placeholders filled; TemplateError (one line) if it cannot be."""
    try:
        chunks, size = [], 0
        for chunk in _compiled(template.text).generate(context):
            size += len(chunk)
            if size > MAX_PROMPT_CHARS:
                raise TemplateError(f"the rendered prompt passed {MAX_PROMPT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateError:
        raise
    except SecurityError as err:
        raise TemplateError(f"refused by the sandbox: {err}") from None
    except UndefinedError as err:
        raise TemplateError(f"{err.message}") from None
    except Exception as err:  # a filter on the wrong type, say: the template's mistake
        raise TemplateError(f"{type(err).__name__}: {err}") from None
