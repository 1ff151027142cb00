"""A whole job on the embedded default: the real llama.cpp server and the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import briefd
from briefd.config import ConfigError, Settings
from briefd.messages import JobStatus

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(
        os.environ.get("BRIEFD_SKIP_LOCAL") == "1", reason="BRIEFD_SKIP_LOCAL=1 (not in CI)"
    ),
]


def test_full_job_on_the_local_model(repo: Path, tmp_path: Path) -> None:
    """No base URL: briefd starts the local model, writes four documents (JSON ones valid
    against their schemas), records the API's usage, and stops the model server."""
    job = json.loads((repo / "examples" / "northwind-briefing.json").read_text())
    settings = Settings(base_url=None, model_dir=None, timeout_ms=120_000)
    with briefd.Pipeline(settings) as pipeline:
        assert pipeline.settings.base_url is None
        result = pipeline.submit(job).get(timeout=600)
        server = pipeline._provider._server if pipeline._provider else None
        assert server is not None and server.pid is not None
        pid = server.pid
    assert result.status is JobStatus.SUCCEEDED, result.errors
    docs = result.documents
    assert isinstance(docs["BRIEFING_MD"], str) and len(docs["BRIEFING_MD"]) > 50
    assert isinstance(docs["PLAYS_MD"], str) and len(docs["PLAYS_MD"]) > 50
    assert isinstance(docs["PROCUREMENT_JSON"]["vendors"], list)
    assert isinstance(docs["ANNEX_JSON"]["sources"], list)
    for usage in result.metrics.usage.values():
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    with pytest.raises(ProcessLookupError):  # the model server stopped with the pipeline
        os.kill(pid, 0)


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    """BRIEFD_MODEL_PATH naming no file: one ConfigError naming it, nothing started."""
    missing = tmp_path / "nope.gguf"
    with (
        pytest.raises(ConfigError, match=r"nope\.gguf"),
        briefd.Pipeline(Settings(base_url=None, model_path=missing)),
    ):
        pass


def test_cli_reports_a_corrupt_model_in_one_line(
    tmp_path: Path, briefd_cmd: Any, child_env: Any, repo: Path
) -> None:
    """A corrupt GGUF file: `briefd run` exits 2 with one line, no traceback."""
    import subprocess

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    proc = subprocess.run(
        briefd_cmd("run", str(repo / "examples" / "northwind-briefing.json"), "--out", "o"),
        env=child_env(BRIEFD_MODEL_PATH=str(bad)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("briefd: local model:") and "bad.gguf" in last
    assert "Traceback" not in proc.stderr


def test_local_model_port_already_taken(tmp_path: Path, briefd_cmd: Any, child_env: Any) -> None:
    """`briefd local-model --port N` with N taken: exit 2 naming the port."""
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            briefd_cmd("local-model", "--port", str(port)),
            env=child_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 2, proc.stderr
    assert str(port) in proc.stderr and "Traceback" not in proc.stderr


def test_missing_local_extra_is_one_line_saying_what_to_install(
    tmp_path: Path, briefd_cmd: Any, child_env: Any, repo: Path
) -> None:
    """Without xllamacpp's compiled server (here: an xllamacpp package with no extension
    module on the path first), `briefd run` with no base URL exits 2 with one line naming
    the extra."""
    import subprocess

    shadow = tmp_path / "shadow" / "xllamacpp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    proc = subprocess.run(
        briefd_cmd("run", str(repo / "examples" / "northwind-briefing.json"), "--out", "o"),
        env=child_env(PYTHONPATH=str(tmp_path / "shadow")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "pip install 'briefd[local]'" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
