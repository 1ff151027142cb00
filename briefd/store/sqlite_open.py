"""Opening the SQLite journal: a new one made private and whole, a damaged one moved aside.

Every acknowledged job lives in this file, so two things must never happen:

* starting empty over an existing journal. SQLite takes a zero-length file for
  a new database, and a daemon that did so would silently forget every job it
  acknowledged. So a journal file that exists must open *and* pass
  ``PRAGMA quick_check``; a zero-length one, garbage, or a truncated one is
  moved aside (:func:`quarantine`) with its ``-wal`` and ``-shm``, and the
  daemon exits 2 saying where it went (:class:`JournalDamaged`). Nothing is
  deleted: the operator decides.
* a journal readable by others. A new journal is made under a temporary name,
  mode 0600 (SQLite gives its ``-wal`` and ``-shm`` the database's mode), put
  in WAL mode, and only then renamed into place: the journal's name never
  names an empty file, even after a crash in the middle.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from briefd.config import ConfigError
from briefd.private import create_private_file, private_dir

SIDE_FILES = ("-wal", "-shm")
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def unavailable(err: sqlite3.Error) -> bool:
    """A failure of the disk or the file (full, I/O, locked, corrupt), not of briefd's SQL."""
    return isinstance(err, sqlite3.OperationalError) or type(err) is sqlite3.DatabaseError


class JournalDamaged(ConfigError):
    """The journal was damaged and has been moved aside; the message says where (exit 2)."""


def open_journal_db(path: Path) -> sqlite3.Connection:
    """A checked connection to the journal at ``path`` in WAL mode (made if there is none).

    Raises :class:`JournalDamaged` after moving a damaged journal aside, and
    :class:`ConfigError` when the file cannot be opened at all.
    """
    private_dir(path.parent)
    wal = Path(f"{path}-wal")
    try:
        size: int | None = os.stat(path).st_size
    except FileNotFoundError:
        size = None
    if size is None and wal.exists() and wal.stat().st_size > 0:
        raise _damaged(path, "the journal file is missing but its write-ahead log is there")
    if size == 0:
        raise _damaged(path, "an empty file, 0 bytes")
    if size is None:
        _create(path)
    problem = _check(path)
    if problem is not None:
        raise _damaged(path, problem)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise ConfigError(f"journal {path}: cannot open: {err}") from None
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error as err:
        db.close()
        raise ConfigError(f"journal {path}: cannot open: {err}") from None
    if str(mode).lower() != "wal":
        db.close()
        raise ConfigError(f"journal {path}: cannot use WAL mode (got {mode})")
    return db


def _check(path: Path) -> str | None:
    """What is wrong with the journal at ``path`` (None: nothing), by ``PRAGMA quick_check``.

    Read-only: a read-write connection that fails on a damaged file deletes its
    ``-wal`` on close, and with it the last commits someone may want to recover.
    """
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise ConfigError(f"journal {path}: cannot open: {err}") from None
    try:
        found = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorcode", None) in _DAMAGED:
            return str(err)
        raise ConfigError(f"journal {path}: cannot open: {err}") from None
    finally:
        db.close()
    return None if found == ["ok"] else f"quick_check: {found[0] if found else 'no answer'}"


def _create(path: Path) -> None:
    """A new, empty WAL-mode journal at ``path``, mode 0600, appearing there whole."""
    tmp = path.with_name(f"{path.name}.new")
    for leftover in (tmp, *(Path(f"{tmp}{s}") for s in (*SIDE_FILES, "-journal"))):
        leftover.unlink(missing_ok=True)  # an earlier creation that crashed
    try:
        os.close(create_private_file(tmp))
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # writes the header: no longer 0 bytes
        finally:
            db.close()
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, sqlite3.Error) as err:
        raise ConfigError(f"journal {path}: cannot create it: {err}") from None


def quarantine(path: Path) -> tuple[Path, list[str]]:
    """Move the journal at ``path`` and its side files beside it, under a timestamped name.

    Returns the new name and the side files (``-wal``, ``-shm``) that were moved with it.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{dest}{s}").exists() for s in ("", *SIDE_FILES)):
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    moved: list[str] = []
    for suffix in ("", *SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{dest}{suffix}")
            moved.append(suffix)
    return dest, [s for s in moved if s]


def _damaged(path: Path, why: str) -> JournalDamaged:
    try:
        dest, sides = quarantine(path)
    except OSError as err:
        return JournalDamaged(
            f"journal {path} is damaged ({why}) and could not be moved aside ({err.strerror}): "
            "move it (and its -wal, -shm) away yourself, then start again"
        )
    with_sides = f" (with its {' and '.join(sides)})" if sides else ""
    return JournalDamaged(
        f"journal {path} is damaged ({why}): moved to {dest}{with_sides}; "
        f"start briefd again to begin with an empty journal, or put a good copy back at {path}"
    )
