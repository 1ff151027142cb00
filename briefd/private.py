"""Folders and files only the daemon's user may open: 0700 and 0600, whatever the umask.

The data dir holds every job's prompts and documents, and the API token. A
permissive umask (``0o022``, ``0o000``) must not make any of it readable by
others, and a restrictive one (``0o777``) must not make it unusable: so each
folder and file briefd creates there is ``chmod``-ed to its exact mode right
after it is created. What already exists is left as the operator made it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a folder, creating it and any missing parent with mode 0700."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile
            os.mkdir(folder, DIR_MODE)
            os.chmod(folder, DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(20, "not a directory", str(path))
    return path


def create_private_file(path: Path) -> int:
    """A new file at ``path`` (never an existing one, never through a link), mode 0600.

    Returns the open descriptor (write-only); FileExistsError if ``path`` exists.
    """
    return _open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def open_private_file(path: Path) -> int:
    """``path`` opened read-write, created if missing; a file briefd owns, so made 0600.

    Never through a link (``O_NOFOLLOW``).
    """
    return _open_private(path, os.O_RDWR | os.O_CREAT)


def _open_private(path: Path, flags: int) -> int:
    """Open with ``flags``, never through a link, and make the file 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
