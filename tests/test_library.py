"""briefd as a library: quiet until the application configures logging, and easy to feed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from briefd.sim.server import SimServer

SCRIPT = """
import json, sys
import briefd
job = json.loads(sys.argv[2]) if sys.argv[3] == "dict" else sys.argv[2]
result = briefd.run(job, briefd.Settings(base_url=sys.argv[1], timeout_ms=5000))
sys.exit(0 if result.status == "succeeded" else 1)
"""


def _run_script(
    sim: SimServer, job: str, kind: str, child_env: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, sim.base_url, job, kind],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )


def test_import_and_run_print_nothing(
    sim: SimServer, make_job: Any, child_env: Any, tmp_path: Path
) -> None:
    """``import briefd; briefd.run(...)`` writes nothing to stdout or stderr (loguru disabled)."""
    proc = _run_script(sim, json.dumps(make_job("quiet-1")), "dict", child_env)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_run_accepts_a_path(sim: SimServer, make_job: Any, child_env: Any, tmp_path: Path) -> None:
    """``briefd.run`` takes a job file's path, as ``Client.submit`` does."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(make_job("quiet-2")), encoding="utf-8")
    proc = _run_script(sim, str(path), "path", child_env)
    assert proc.returncode == 0, proc.stderr
    assert sim.stats().by_job_stage["quiet-2"] == dict.fromkeys(
        ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON"), 1
    )
