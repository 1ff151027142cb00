"""``briefd serve``'s API against one shared daemon (a real subprocess) and the simulator.

Jobs through the Python client and the CLI, the daemon-wide token cap, idempotent
submission, authentication, body limits, malformed jobs, cancel, /metrics and
systemd notifications.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import HTTP, STAGES, Daemon, make_job, wait_for
from prometheus_client.parser import text_string_to_metric_families

from briefd.daemon.client import DaemonError
from briefd.messages import JobState, JobStatus, StageState
from briefd.sim.server import Fault, SimProfile, SimServer

MAX_BODY = 65_536


@pytest.fixture(scope="module")
def api_sim() -> Iterator[SimServer]:
    """One simulator for the module (per-job counters keep the tests apart)."""
    with SimServer(SimProfile(scale=0.01)) as server:
        yield server


class Notifications:
    """A NOTIFY_SOCKET that records every datagram the daemon sends (as systemd would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if ready:
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notifications]:
    """The systemd notification socket the shared daemon talks to."""
    n = Notifications(tmp_path_factory.mktemp("notify") / "notify.sock")
    yield n
    n.close()


@pytest.fixture(scope="module")
def daemon(
    api_sim: SimServer, notify: Notifications, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """The shared daemon: 2 tokens, a 64 KiB body limit, systemd watchdog every 0.2 s."""
    d = Daemon(
        tmp_path_factory.mktemp("daemon"),
        api_sim.base_url,
        max_concurrent=2,
        max_body_bytes=MAX_BODY,
        grace_s=2,
        timeout_ms=5000,
    )
    d.env.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"})
    d.start()
    yield d
    d.signal(signal.SIGTERM)
    assert d.wait_exit(20) == 0, d.log()


def test_twenty_jobs_through_the_client_share_one_token_cap(
    daemon: Daemon, api_sim: SimServer
) -> None:
    """20 jobs submitted from Python all succeed, each stage called once, never over 2 calls."""
    ids = [f"many-{i:02d}" for i in range(20)]
    with daemon.client() as client:
        assert [client.submit(make_job(i)) for i in ids] == ids
        results = [client.result(i, timeout=60) for i in ids]
        listed = {j.job_id for j in client.jobs(JobState.SUCCEEDED, limit=1000)}
    assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 20
    assert all(r.documents[s] for r in results for s in STAGES)
    stats = api_sim.stats()
    assert 1 <= stats.max_in_flight <= 2, "the token cap is daemon-wide, across jobs"
    for i in ids:
        assert stats.by_job_stage[i] == dict.fromkeys(STAGES, 1)
        assert (daemon.data_dir / "jobs" / i / "result.json").is_file()
        assert (daemon.data_dir / "jobs" / i / "briefing.md").read_text().startswith("# Briefing")
    assert set(ids) <= listed


def test_cli_submit_wait_status_result_cancel(daemon: Daemon, tmp_path: Path) -> None:
    """The CLI submits and waits (exit 0), reports status and the result JSON, and cancels."""
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(make_job("cli-1")))
    env = {**daemon.env}

    def briefd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "briefd", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = briefd("submit", str(job_file), "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "cli-1" and "succeeded" in done.stdout
    status = briefd("status", "cli-1")
    assert status.returncode == 0 and "ANNEX_JSON" in status.stdout and "100%" in status.stdout
    result = briefd("result", "cli-1")
    assert result.returncode == 0
    assert json.loads(result.stdout)["status"] == "succeeded"
    missing = briefd("status", "no-such-job")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no such job" in missing.stderr
    cancelled = briefd("cancel", "cli-1")  # already finished: it stays as it ended
    assert cancelled.returncode == 0 and "succeeded" in cancelled.stdout


def test_duplicate_submission_returns_the_existing_job(daemon: Daemon, api_sim: SimServer) -> None:
    """A job_id submitted again (during and after its run) is that job: it never runs twice."""
    first = HTTP.post(f"{daemon.url}/v1/jobs", json=make_job("dup-1"), headers=daemon.headers())
    again = HTTP.post(f"{daemon.url}/v1/jobs", json=make_job("dup-1"), headers=daemon.headers())
    assert first.status_code == 202 and first.json()["created"] is True
    assert again.status_code == 200 and again.json()["job_id"] == "dup-1"
    assert again.json()["created"] is False
    with daemon.client() as client:
        assert client.result("dup-1", timeout=30).status is JobStatus.SUCCEEDED
        assert client.submit(make_job("dup-1")) == "dup-1"
        assert client.status("dup-1").status is JobState.SUCCEEDED
    assert api_sim.stats().by_job_stage["dup-1"] == dict.fromkeys(STAGES, 1)


def test_missing_or_wrong_token_is_refused(daemon: Daemon) -> None:
    """Every endpoint but /healthz needs the bearer token; errors are JSON and never echo it."""
    assert HTTP.get(f"{daemon.url}/healthz", timeout=5).json() == {"status": "ok"}
    for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/metrics")):
        for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": "x"}):
            resp = HTTP.request(method, daemon.url + path, headers=headers, timeout=5)
            assert resp.status_code == 401, (method, path, headers)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert "wrong-token-123" not in resp.text and daemon.token not in resp.text
    assert daemon.token not in daemon.log()


def _raw_request(daemon: Daemon, head: str, body_chunks: Iterator[bytes]) -> str:
    """Send ``head`` then chunks until the server answers; return what it answered."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered before we finished
            try:
                sock.sendall(chunk)
            except OSError:
                break
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer.decode(errors="replace")


def test_oversized_body_is_refused_before_it_is_read(daemon: Daemon) -> None:
    """A body over the limit gets 413 from its Content-Length alone, or mid-stream if chunked."""
    auth = f"Host: 127.0.0.1:{daemon.port}\r\nAuthorization: Bearer {daemon.token}\r\n"
    head = f"POST /v1/jobs HTTP/1.1\r\n{auth}Content-Length: 50000000\r\n\r\n"
    answer = _raw_request(daemon, head, iter([b'{"job_id": ']))  # 11 of 50,000,000 bytes
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"code":"too_large"' in answer and "max_body_bytes" in answer
    head = f"POST /v1/jobs HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
    answer = _raw_request(daemon, head, iter([chunk] * (4 * MAX_BODY // 0x4000)))
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"code":"too_large"' in answer


def test_malformed_job_is_refused_naming_the_field(daemon: Daemon) -> None:
    """Bad JSON, a missing prompt, a bad id: 400 with the field at fault, nothing accepted."""
    url, headers = f"{daemon.url}/v1/jobs", daemon.headers()
    bad_json = HTTP.post(url, data=b"{not json", headers=headers, timeout=5)
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["code"] == "invalid_json"
    assert bad_json.json()["error"]["field"] == "body"
    job = make_job("bad-1")
    del job["prompts"]["PLAYS_MD"]
    missing = HTTP.post(url, json=job, headers=headers, timeout=5).json()["error"]
    assert missing["code"] == "invalid_job" and missing["field"] == "prompts.PLAYS_MD"
    assert "prompts.PLAYS_MD" in missing["message"]
    bad_id = HTTP.post(url, json=make_job("no spaces allowed"), headers=headers, timeout=5)
    assert bad_id.status_code == 400 and bad_id.json()["error"]["field"] == "job_id"
    not_object = HTTP.post(url, json=["a", "list"], headers=headers, timeout=5)
    assert "must be a JSON object" in not_object.json()["error"]["message"]
    with daemon.client() as client, pytest.raises(DaemonError) as err:
        client.submit({"job_id": "bad-2", "prompts": {"NOPE": "x"}})
    assert err.value.status == 400 and err.value.field is not None
    assert HTTP.get(f"{url}/bad-1", headers=headers, timeout=5).status_code == 404
    query = HTTP.get(url, params={"status": "sleeping"}, headers=headers, timeout=5)
    assert query.status_code == 400 and query.json()["error"]["field"] == "status"


def test_cancel_abandons_the_call_and_never_starts_the_rest(
    daemon: Daemon, api_sim: SimServer
) -> None:
    """Cancelling mid-stage: the job ends cancelled; stages not yet started are never called."""
    api_sim.inject(Fault(job_id="cancel-1", stage="PLAYS_MD", delay_s=1.5))
    with daemon.client() as client:
        client.submit(make_job("cancel-1"))
        assert wait_for(
            lambda: (
                client.status("cancel-1").stages["PLAYS_MD"] is StageState.RUNNING
                and client.status("cancel-1").stages["BRIEFING_MD"] is StageState.COMPLETE
            ),
            10,
        ), client.status("cancel-1")
        assert client.cancel("cancel-1") is JobState.RUNNING  # calls being abandoned
        result = client.result("cancel-1", timeout=10)
        assert client.cancel("cancel-1") is JobState.CANCELLED
    assert result.status is JobStatus.CANCELLED
    assert result.documents["BRIEFING_MD"] and result.documents["ANNEX_JSON"] is None
    assert {e.code.value for e in result.errors} == {"CANCELLED"}
    counts = api_sim.stats().by_job_stage["cancel-1"]
    assert counts == {"BRIEFING_MD": 1, "PLAYS_MD": 1}, "dependents never started"
    assert "JobCancelled" in {e["event"] for e in daemon.events("JobCancelled")}


def test_metrics_are_prometheus_text(daemon: Daemon) -> None:
    """/metrics: jobs by state, queue depth, tokens, retries and stage latency histograms."""
    with daemon.client() as client:
        client.submit(make_job("metrics-1"))
        client.result("metrics-1", timeout=30)
    resp = HTTP.get(f"{daemon.url}/metrics", headers=daemon.headers(), timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert families["briefd_stage_retries"].type == "counter"
    assert families["briefd_stage_duration_seconds"].type == "histogram"
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("briefd_jobs", (("state", "succeeded"),))] >= 1
    assert values[("briefd_queue_depth", ())] == 0
    assert values[("briefd_tokens_capacity", ())] == 2
    assert ("briefd_tokens_in_use", ()) in values and ("briefd_stage_retries_total", ()) in values
    bucket = ("briefd_stage_duration_seconds_bucket", (("le", "+Inf"), ("stage", "ANNEX_JSON")))
    inf = values[bucket]
    assert inf == values[("briefd_stage_duration_seconds_count", (("stage", "ANNEX_JSON"),))] >= 1
    # Where the time went: call time and queue time apart, histograms and p50/p95.
    for clock in ("call", "queued", "ttft"):
        assert families[f"briefd_stage_{clock}_seconds"].type == "histogram"
    annex = (("stage", "ANNEX_JSON"),)
    assert values[("briefd_stage_call_seconds_count", annex)] >= 1
    assert values[("briefd_stage_queued_seconds_count", annex)] >= 1
    p95 = (("clock", "call"), ("quantile", "0.95"), ("stage", "ANNEX_JSON"))
    call_p95 = values[("briefd_stage_latency_quantile_seconds", p95)]
    assert 0 < call_p95 <= values[("briefd_stage_duration_seconds_sum", annex)]


def test_systemd_hears_ready_and_watchdog(daemon: Daemon, notify: Notifications) -> None:
    """Under systemd the daemon says READY=1 once listening, then WATCHDOG=1 periodically."""
    assert wait_for(lambda: sum("WATCHDOG=1" in m for m in notify.messages) >= 2, 5)
    ready = [m for m in notify.messages if "READY=1" in m]
    assert ready and f"MAINPID={daemon.proc.pid if daemon.proc else 0}" in ready[0]
    assert notify.messages.index(ready[0]) < min(
        i for i, m in enumerate(notify.messages) if "WATCHDOG=1" in m
    )
