"""Writing a job's documents and result to a directory, each file atomically.

A reader never sees half a file: each is written to a temporary file in the
same directory, flushed, fsynced and renamed over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from briefd.config import PipelineSpec
from briefd.messages import JobResult


def write_atomic(path: Path, data: str) -> None:
    """Replace ``path`` with ``data`` (UTF-8) in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_document(kind: str, document: Any) -> str:
    """A document as file text: markdown as is, JSON pretty-printed."""
    if kind == "markdown" and isinstance(document, str):
        return document
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_document(out: Path, pipeline: PipelineSpec, stage: str, document: Any) -> Path:
    """Write one stage's document under its output name; returns the path."""
    spec = pipeline.by_name[stage]
    path = out / spec.output
    write_atomic(path, render_document(spec.kind, document))
    return path


def write_result(out: Path, pipeline: PipelineSpec, result: JobResult) -> list[Path]:
    """Every produced document plus ``result.json``; returns the document paths."""
    paths = [
        write_document(out, pipeline, stage, doc)
        for stage, doc in result.documents.items()
        if doc is not None
    ]
    write_atomic(out / "result.json", result.model_dump_json(indent=2) + "\n")
    return paths
