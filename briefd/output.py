"""Writing a job's documents and result to a folder: each file atomically, no link followed.

A reader never sees half a file: each is written to a temporary file in the
same folder (``.briefd-tmp.<name>.<random>``, created ``O_EXCL|O_NOFOLLOW``,
mode 0600), flushed, fsynced and renamed over the target relative to the
folder's descriptor, then the folder is fsynced. A rename replaces a link
planted at the target instead of writing through it.

Under the daemon's data dir nothing is followed at all: ``jobs/`` and each
job's folder are opened ``O_DIRECTORY|O_NOFOLLOW``, so a planted link makes the
write fail (:class:`OutputError`) instead of landing outside the data dir.
Temporary files a crash left between write and rename are removed at start
(:func:`sweep_temp_files`).

Every failure is an :class:`OutputError`: the path it concerns and the reason,
in one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from briefd.config import PipelineSpec
from briefd.messages import JobResult
from briefd.private import DIR_MODE, FILE_MODE

TEMP_PREFIX = ".briefd-tmp."
"""The name every temporary file starts with, so that leftovers are recognised as ours."""
RESULT_FILE = "result.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputError(OSError):
    """A file or folder could not be written: ``path`` says which, ``reason`` why."""

    def __init__(self, path: Path, reason: str, errno_: int | None = None) -> None:
        super().__init__(errno_ or 0, f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _failure(path: Path, err: OSError) -> OutputError:
    if isinstance(err, OutputError):
        return err
    if err.errno == errno.ELOOP:
        reason = "is a symbolic link (briefd follows none under its data dir)"
    else:
        reason = err.strerror or str(err)
    return OutputError(path, reason, err.errno)


@dataclass
class Written:
    """What :meth:`OutputDir.write_result` managed: the files written (``result.json`` last),
    and those it could not write."""

    paths: list[Path] = field(default_factory=list)
    failed: list[OutputError] = field(default_factory=list)


class OutputDir:
    """An open folder that files are written into by name. Close it (or use ``with``)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> OutputDir:
        """The folder at ``path``, made if missing: a user's ``--out``, links in it followed."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            return cls(path, os.open(path, _DIR_FLAGS))
        except OSError as err:
            raise _failure(path, err) from None

    @classmethod
    def private(cls, path: Path) -> OutputDir:
        """The folder at ``path`` (made 0700 if missing), refused if it is a link."""
        return cls(path, _open_private_dir(path, None))

    @classmethod
    def job(cls, jobs_dir: Path, job_id: str) -> OutputDir:
        """``jobs_dir/job_id`` (each made 0700 if missing), refused if either is a link."""
        if not job_id or "/" in job_id or job_id in (".", ".."):
            raise OutputError(jobs_dir / job_id, "not a job folder name")
        jobs_fd = _open_private_dir(jobs_dir, None)
        try:
            return cls(jobs_dir / job_id, _open_private_dir(jobs_dir / job_id, jobs_fd))
        finally:
            os.close(jobs_fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------

    def write(self, name: str, data: str) -> Path:
        """Replace the file ``name`` with ``data`` (UTF-8) in one rename; its path."""
        target = self.path / name
        tmp = f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, _TEMP_FLAGS, FILE_MODE, dir_fd=self._fd)
        except OSError as err:
            raise _failure(target, err) from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)
                f.write(data.encode("utf-8", "replace"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            os.fsync(self._fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)
            raise _failure(target, err) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)
            raise
        return target

    def write_document(self, pipeline: PipelineSpec, stage: str, document: Any) -> Path:
        """One stage's document under its output name (KeyError: a stage the pipeline lacks)."""
        spec = pipeline.by_name[stage]
        return self.write(spec.output, render_document(spec.kind, document))

    def write_result(
        self, pipeline: PipelineSpec, result: JobResult, already: Mapping[str, Any] | None = None
    ) -> Written:
        """Every produced document, then ``result.json``: each tried even if one fails.

        ``already`` (stage -> document) names documents written here before (as
        they streamed in): unchanged, they are not written again. Documents of
        stages the pipeline no longer has are skipped (``result.json`` holds them all).
        """
        done = Written()
        known = pipeline.by_name
        for stage, document in result.documents.items():
            if document is None or stage not in known:
                continue
            if already is not None and stage in already and already[stage] == document:
                done.paths.append(self.path / known[stage].output)
                continue
            try:
                done.paths.append(self.write_document(pipeline, stage, document))
            except OutputError as err:
                done.failed.append(err)
        try:
            done.paths.append(self.write(RESULT_FILE, result.model_dump_json(indent=2) + "\n"))
        except OutputError as err:
            done.failed.append(err)
        return done

    def probe(self, size: int = 1) -> None:
        """Raise :class:`OutputError` unless ``size`` bytes can be written and synced here."""
        tmp = f"{TEMP_PREFIX}probe.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, _TEMP_FLAGS, FILE_MODE, dir_fd=self._fd)
        except OSError as err:
            raise _failure(self.path, err) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise _failure(self.path, err) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)


def _open_private_dir(path: Path, parent_fd: int | None) -> int:
    """Open (making it 0700 if missing) the folder ``path``, never through a link.

    With ``parent_fd`` only the last component is looked up, relative to it.
    """
    name = path.name if parent_fd is not None else str(path)
    created = False
    try:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            pass
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as err:
        raise _failure(path, err) from None
    if created:
        try:
            os.fchmod(fd, DIR_MODE)
            if parent_fd is not None:
                os.fsync(parent_fd)
        except OSError as err:
            os.close(fd)
            raise _failure(path, err) from None
    return fd


def sweep_temp_files(jobs_dir: Path) -> list[Path]:
    """Remove the temporary files a crash left in the job folders; the paths removed.

    Links are not followed; a missing ``jobs_dir`` has nothing to sweep.
    """
    removed: list[Path] = []
    try:
        jobs_fd = os.open(jobs_dir, _DIR_FLAGS | os.O_NOFOLLOW)
    except FileNotFoundError:
        return removed
    except OSError as err:
        raise _failure(jobs_dir, err) from None
    try:
        with os.scandir(jobs_fd) as jobs:
            names = [job.name for job in jobs if job.is_dir(follow_symlinks=False)]
        for name in names:
            try:
                fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=jobs_fd)
            except OSError:
                continue
            try:
                with os.scandir(fd) as entries:
                    temps = [
                        e.name
                        for e in entries
                        if e.name.startswith(TEMP_PREFIX) and e.is_file(follow_symlinks=False)
                    ]
                for temp in temps:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp, dir_fd=fd)
                        removed.append(jobs_dir / name / temp)
            finally:
                os.close(fd)
    finally:
        os.close(jobs_fd)
    return removed


def render_document(kind: str, document: Any) -> str:
    """A document as file text: markdown as is, JSON pretty-printed."""
    if kind == "markdown" and isinstance(document, str):
        return document
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# -- path-based helpers (one folder, opened for the call) ------------------------------


def write_atomic(path: Path, data: str) -> None:
    """Replace ``path`` with ``data`` (UTF-8) in one rename (its folder is made if missing)."""
    with OutputDir.open(path.parent) as out:
        out.write(path.name, data)


def write_document(out: Path, pipeline: PipelineSpec, stage: str, document: Any) -> Path:
    """Write one stage's document under its output name; returns the path."""
    with OutputDir.open(out) as folder:
        return folder.write_document(pipeline, stage, document)


def write_result(out: Path, pipeline: PipelineSpec, result: JobResult) -> list[Path]:
    """Every produced document plus ``result.json``; the document paths (OutputError: the
    first file that could not be written, once every file was tried)."""
    with OutputDir.open(out) as folder:
        done = folder.write_result(pipeline, result)
    if done.failed:
        raise done.failed[0]
    return [p for p in done.paths if p.name != RESULT_FILE]
