"""The command line as a user meets it: real subprocesses against the simulator.

``briefd run``; the first look (``--version``, ``briefd`` alone, every command's
``--help``); settings that forgive (an unknown ``BRIEFD_*`` variable is warned
about, a bad log level is one line); and the daemon's client commands:
``submit --wait`` draws a bar on a terminal and nothing extra on a pipe, and a
resubmitted job says it was not submitted again.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon

import briefd
from briefd.cli import COMMANDS
from briefd.cli import main as cli_main
from briefd.sim.server import Fault, SimProfile, SimServer

BAR = "\u2501"  # rich's bar character


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _run_job(
    job: dict[str, Any], sim: SimServer, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`briefd run` on ``job`` against the sim; the process and its output directory."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    out = tmp_path / "out"
    cmd = briefd_cmd("run", str(path), "--out", str(out))
    return _run(cmd, child_env(BRIEFD_BASE_URL=sim.base_url), tmp_path), out


def test_run_writes_four_documents_and_the_result(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """Exit 0; briefing.md, plays.md, procurement.json, annex.json and result.json written."""
    proc, out = _run_job(make_job(), sim, tmp_path, briefd_cmd, child_env)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["annex.json", "briefing.md", "plays.md", "procurement.json", "result.json"]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert json.loads((out / "annex.json").read_text()) == result["documents"]["ANNEX_JSON"]
    assert (out / "briefing.md").read_text() == result["documents"]["BRIEFING_MD"]
    assert "succeeded" in proc.stdout and str(out / "briefing.md") in proc.stdout


def test_partial_run_exits_3_and_skips_the_failed_document(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """A failed PLAYS_MD: exit 3, no plays.md, the error on stderr with its hint."""
    sim.inject(Fault(stage="PLAYS_MD", status=400, times=None))
    proc, out = _run_job(make_job(), sim, tmp_path, briefd_cmd, child_env)
    assert proc.returncode == 3, proc.stderr
    assert not (out / "plays.md").exists()
    assert "error PLAYS_MD HTTP_ERROR" in proc.stderr


def test_bad_input_exits_2_with_one_line(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """Bad job, bad config, bad variable: exit 2 and one line naming it, no traceback."""
    env = child_env(BRIEFD_BASE_URL=sim.base_url)
    job = make_job()
    del job["prompts"]["ANNEX_JSON"]
    bad_job = tmp_path / "job.json"
    bad_job.write_text(json.dumps(job))
    cases = [
        (briefd_cmd("run", str(bad_job), "--out", "o"), env, "prompts.ANNEX_JSON"),
        (
            briefd_cmd("run", str(bad_job), "--out", "o", "--config", "missing.toml"),
            env,
            "missing.toml",
        ),
        (
            briefd_cmd("run", str(bad_job), "--out", "o"),
            {**env, "BRIEFD_TIMEOUT_MS": "x"},
            "BRIEFD_TIMEOUT_MS",
        ),
        (
            briefd_cmd("run", str(bad_job), "--out", "o"),
            {**env, "BRIEFD_LOG_LEVEL": "loud"},
            "BRIEFD_LOG_LEVEL",
        ),
        (briefd_cmd("run"), env, "required"),
    ]
    for cmd, cmd_env, needle in cases:
        proc = _run(cmd, cmd_env, tmp_path)
        assert proc.returncode == 2, (cmd, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert sim.stats().total_requests == 0


def test_sim_command_serves_until_terminated(
    tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """``briefd sim --port 0`` prints its URL, answers, and exits 0 on SIGTERM."""
    import requests

    proc = subprocess.Popen(
        briefd_cmd("sim", "--port", "0", "--scale", "0"),
        env=child_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        models = requests.get(url + "/models", timeout=5).json()
        assert models["data"][0]["id"] == "briefd-sim"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# -- the first look -------------------------------------------------------------------


def test_version_is_the_package_version(tmp_path: Path, briefd_cmd: Any, child_env: Any) -> None:
    """``briefd --version``: ``briefd <version>`` from the package metadata, exit 0."""
    proc = _run(briefd_cmd("--version"), child_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"briefd {importlib.metadata.version('briefd')}\n"
    assert briefd.__version__ == importlib.metadata.version("briefd")


def test_briefd_alone_lists_every_command_and_exits_2(
    tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """No command: the usage, each command with its one-line description (stderr), exit 2."""
    proc = _run(briefd_cmd(), child_env(), tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage: briefd")
    listed = " ".join(proc.stderr.split())  # local-model's description wraps to its own line
    for name, (_, _, help_text) in {"run": ("", "", "run one job"), **COMMANDS}.items():
        assert f" {name} {help_text}" in listed, name
    assert "Traceback" not in proc.stderr


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``briefd ARGS --help`` through the CLI's entry point: its stdout (exit 0 asserted)."""
    try:
        code: object = cli_main([*args, "--help"])
    except SystemExit as exited:  # argparse's --help; `briefd sim` returns its code instead
        code = exited.code
    assert code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", *COMMANDS])
def test_every_command_help_has_a_description(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between the usage and the options there is a sentence about what the command does."""
    out = _help(capsys, command)
    assert out.startswith(f"usage: briefd {command}")
    paragraphs = out.split("\n\n")
    description = " ".join(paragraphs[1].split())
    assert not description.endswith(":") and not description.startswith("positional"), out
    assert len(description) >= 40 and "``" not in description, description


def test_run_help_lists_exit_codes_and_variables(capsys: pytest.CaptureFixture[str]) -> None:
    """``briefd run --help``: the four exit codes and the main BRIEFD_* variables."""
    out = _help(capsys, "run")
    epilog = out[out.index("exit codes:") :]
    for code, meaning in [("0", "succeeded"), ("3", "partial"), ("1", "failed or cancelled")]:
        assert f"  {code}  {meaning}" in epilog
    assert "  2  bad input or configuration" in epilog
    for name in (
        "BRIEFD_BASE_URL",
        "BRIEFD_API_KEY",
        "BRIEFD_MODEL",
        "BRIEFD_MAX_CONCURRENT",
        "BRIEFD_PARALLEL",
        "BRIEFD_TIMEOUT_MS",
        "BRIEFD_LOG_LEVEL",
        "BRIEFD_CONFIG",
    ):
        assert f"\n  {name} " in epilog, name


# -- settings that forgive ------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def test_unknown_variable_is_warned_once_and_log_level_takes_any_case(
    sim: SimServer, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """``BRIEFD_MAX_CONCURENT=4``: one warning naming it and BRIEFD_MAX_CONCURRENT; the run
    goes on (exit 0). ``BRIEFD_LOG_LEVEL=debug`` is DEBUG."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(make_job()))
    env = child_env(
        BRIEFD_BASE_URL=sim.base_url, BRIEFD_MAX_CONCURENT="4", BRIEFD_LOG_LEVEL="debug"
    )
    proc = _run(briefd_cmd("run", str(path), "--out", str(tmp_path / "out")), env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = _json_lines(proc.stderr)
    warned = [x for x in lines if "BRIEFD_MAX_CONCURENT" in x["msg"]]
    assert len(warned) == 1, proc.stderr
    assert warned[0]["level"] == "WARNING" and "BRIEFD_MAX_CONCURRENT?" in warned[0]["msg"]
    assert any(x["level"] == "DEBUG" for x in lines), proc.stderr


# -- the daemon's client commands -----------------------------------------------------


@pytest.fixture(scope="module")
def client_sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(client_sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the client tests, started with a misspelt variable in its environment."""
    d = Daemon(tmp_path_factory.mktemp("daemon"), client_sim.base_url, max_concurent="4")
    d.start()
    yield d
    d.stop()


def _client_env(daemon: Daemon, child_env: Any, **extra: str) -> dict[str, str]:
    """The environment a client needs to find the daemon's token (its data dir)."""
    return child_env(BRIEFD_DATA_DIR=str(daemon.data_dir), TERM="xterm-256color", **extra)


def _job_file(tmp_path: Path, make_job: Any, job_id: str) -> Path:
    path = tmp_path / f"{job_id}.json"
    path.write_text(json.dumps(make_job(job_id)))
    return path


def _run_on_a_terminal(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 60.0
) -> tuple[int, str, str]:
    """``cmd`` with its stderr on a pseudo-terminal: exit code, stdout, what the terminal got."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
        )
    finally:
        os.close(slave)
    got = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise AssertionError(f"{cmd}: still running after {timeout_s}s: {got!r}")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out.decode(), got.decode(errors="replace")


def test_submit_wait_draws_a_bar_on_a_terminal(
    daemon: Daemon, tmp_path: Path, make_job: Any, briefd_cmd: Any, child_env: Any
) -> None:
    """stderr a terminal: a rich progress bar that reaches 100%; stdout still the id and
    the outcome, exit 0."""
    path = _job_file(tmp_path, make_job, "cli-bar-1")
    cmd = briefd_cmd("submit", str(path), "--wait", "--url", daemon.url)
    code, out, terminal = _run_on_a_terminal(cmd, _client_env(daemon, child_env), tmp_path)
    assert code == 0, terminal
    assert out.splitlines()[0] == "cli-bar-1"
    assert out.splitlines()[1].startswith("cli-bar-1: succeeded in ")
    assert BAR in terminal and "100%" in terminal, terminal


def test_submit_wait_on_a_pipe_prints_no_bar_and_resubmission_says_so(
    daemon: Daemon,
    client_sim: SimServer,
    tmp_path: Path,
    make_job: Any,
    briefd_cmd: Any,
    child_env: Any,
) -> None:
    """On a pipe: the id and the outcome, nothing else. The same job again: the id, one line
    on stderr saying it already exists and was not submitted, no call paid twice."""
    path = _job_file(tmp_path, make_job, "cli-pipe-1")
    env = _client_env(daemon, child_env)
    cmd = briefd_cmd("submit", str(path), "--wait", "--url", daemon.url)
    first = _run(cmd, env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "cli-pipe-1"
    assert first.stdout.splitlines()[1].startswith("cli-pipe-1: succeeded in ")
    assert len(first.stdout.splitlines()) == 2 and first.stderr == ""
    assert BAR not in first.stdout and "\x1b" not in first.stdout

    again = _run(briefd_cmd("submit", str(path), "--url", daemon.url), env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "cli-pipe-1\n"
    assert again.stderr == (
        "briefd: job cli-pipe-1 already exists (state succeeded); not submitted again\n"
    )
    assert client_sim.stats().by_job_stage["cli-pipe-1"] == dict.fromkeys(
        ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON"), 1
    )
    with daemon.client() as client:  # the Python client says the same; submit() is unchanged
        assert client.submit_job(path) == ("cli-pipe-1", "succeeded", False)
        assert client.submit(path) == "cli-pipe-1"


def test_unknown_variables_are_warned_by_the_daemon_and_its_clients(
    daemon: Daemon, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """The daemon logs one warning for BRIEFD_MAX_CONCURENT; a client command names a
    misspelt variable in its environment on stderr and still answers."""
    warned = [e for e in daemon.events("log") if "BRIEFD_MAX_CONCURENT" in e["msg"]]
    assert len(warned) == 1, daemon.log()
    assert warned[0]["level"] == "WARNING" and "BRIEFD_MAX_CONCURRENT?" in warned[0]["msg"]
    env = _client_env(daemon, child_env, BRIEFD_LISTN="127.0.0.1:1")
    proc = _run(briefd_cmd("jobs", "--url", daemon.url), env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "briefd: warning: unknown variable BRIEFD_LISTN (did you mean BRIEFD_LISTEN?): ignored\n"
    )
