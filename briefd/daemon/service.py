"""Process plumbing for running briefd as a service: systemd, signals, the token file.

Kept apart from :mod:`briefd.daemon.main` (the daemon's life: actors, journal, API)
because none of it knows about jobs: it is how a Unix service talks to its
supervisor, takes signals safely, keeps its secret, and shows its threads.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import IO

from loguru import logger

from briefd.config import ConfigError
from briefd.private import create_private_file, open_private_file, private_dir


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``...) on ``$NOTIFY_SOCKET``; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)  # a reader that stopped reading must not stop the daemon
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        logger.warning("sd_notify {}: {}", state.split("=")[0], err)
        return False
    return True


def ensure_token(path: Path) -> str:
    """The bearer token in ``path``, made (mode 0600 whatever the umask, never over an existing
    file, never through a link) if missing."""
    try:
        private_dir(path.parent)
        fd = create_private_file(path)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            logger.warning("token file {} can be read by others: chmod 600 it", path)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"token file {path}: {err.strerror or err}") from None
        if not token:
            raise ConfigError(f"token file {path}: empty") from None
        return token
    except OSError as err:
        raise ConfigError(f"token file {path}: cannot create it: {err.strerror or err}") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    logger.info("created the API token file {} (mode 0600)", path)
    return token


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One daemon per data dir: two would run the same jobs and pay twice. The lock file is
    0600 whatever the umask."""
    path = data_dir / "briefd.lock"
    try:
        fd = open_private_file(path)
    except OSError as err:
        raise ConfigError(f"lock file {path}: {err.strerror or err}") from None
    f = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise ConfigError(
            f"BRIEFD_DATA_DIR {data_dir}: in use by another briefd serve (pid {pid})"
        ) from None
    f.seek(0)
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def dump_threads() -> None:
    """SIGUSR1: every thread's stack, one log record per thread."""
    frames = sys._current_frames()
    threads = threading.enumerate()
    logger.warning("SIGUSR1: stacks of {} threads follow", len(threads))
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)\n"
        logger.warning("thread {} (daemon={}):\n{}", thread.name, thread.daemon, stack.rstrip())


def install_signals() -> tuple[socket.socket, socket.socket]:
    """Route the daemon's signals to a socket the main loop reads (see the module doc).

    Returns (reader, writer); the writer must stay open for the life of the process.
    """
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: None)  # the byte on the socket is the notice
    return reader, writer
