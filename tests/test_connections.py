"""Connections: stages and jobs share kept-alive connections; the daemon's API answers
a kept-alive client without Nagle's ~40 ms stall.

The simulator keeps no count of connections, so :func:`_count_accepts` wraps the
``process_request`` of its server object, which runs once per accepted connection.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import briefd
from briefd.config import load_pipeline
from briefd.daemon.http_api import ApiServer
from briefd.daemon.http_conn import bind_loopback
from briefd.llm.abort import CallAbort, bound, shared_adapter
from briefd.llm.call import ChatClient, build_request
from briefd.llm.errors import CallCancelled
from briefd.messages import JobStatus
from briefd.sim.server import Fault, SimServer


def _count_accepts(sim: SimServer) -> Callable[[], int]:
    """A function returning how many connections ``sim`` has accepted since now."""
    httpd = sim._httpd
    lock = threading.Lock()
    accepted = [0]
    original = httpd.process_request

    def counting(request: Any, client_address: Any) -> None:
        with lock:
            accepted[0] += 1
        original(request, client_address)

    httpd.process_request = counting  # type: ignore[method-assign]

    def count() -> int:
        with lock:
            return accepted[0]

    return count


def test_a_hundred_calls_share_max_concurrent_connections(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """25 jobs of 4 stages each at K=2: 100 calls over at most K (+1 for a race) connections,
    where a connection per stage would be 100."""
    accepted = _count_accepts(sim)
    with briefd.Pipeline(make_settings(max_concurrent=2)) as pipeline:
        futures = [pipeline.submit(make_job(f"conn-{i}")) for i in range(25)]
        results = [f.get(timeout=60) for f in futures]
    assert {r.status for r in results} == {JobStatus.SUCCEEDED}
    assert sim.stats().total_requests == 100
    assert accepted() <= 3, accepted()


def test_a_pooled_connection_outlives_an_abort_after_its_call(sim: SimServer) -> None:
    """A connection back in the pool has left its call's abort: an abort that comes after
    (still inside the call's ``bound``, the window before it is cleared) leaves it alone,
    so the next call, of another job, reuses it rather than finding it shut down."""
    accepted = _count_accepts(sim)
    url = sim.base_url + "/models"
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", shared_adapter(sim.base_url, 1))
    abort = CallAbort()
    with bound(abort):
        assert session.get(url, timeout=5).status_code == 200  # read whole: back in the pool
        abort.abort()
    with bound(CallAbort()):
        assert session.get(url, timeout=5).status_code == 200
    assert accepted() == 1


def test_an_aborted_connection_is_not_pooled(sim: SimServer) -> None:
    """A connection whose call was aborted is closed on its way back to the pool, even when
    its answer had already arrived whole (the abort came between the read and the release).
    Driven at urllib3's seam (``_get_conn`` / ``_put_conn``) to place the abort exactly."""
    url = sim.base_url + "/models"
    pool = shared_adapter(sim.base_url, 1).poolmanager.connection_from_url(url)
    abort = CallAbort()
    with bound(abort):
        conn = pool._get_conn()
        conn.request("GET", "/v1/models")  # registers with the abort
        assert conn.getresponse().data  # read whole
        abort.abort()
        pool._put_conn(conn)
    assert conn.sock is None, "an aborted socket went back to the pool open"


def test_cancel_cuts_one_call_and_not_its_pool_neighbour(
    sim: SimServer, make_settings: Any
) -> None:
    """Two calls in flight on one endpoint's pool: aborting one cuts it at once; the other,
    on a connection from the same pool, completes."""
    sim.inject(Fault(stage="BRIEFING_MD", job_id="cut", hang=True, times=None))
    sim.inject(Fault(stage="BRIEFING_MD", job_id="kept", delay_s=0.3))
    settings = make_settings(timeout_ms=60_000, max_concurrent=2)
    spec = load_pipeline().by_name["BRIEFING_MD"]
    outcomes: dict[str, Any] = {}

    def call(job_id: str, abort: CallAbort) -> None:
        client = ChatClient(settings, sim.base_url, abort)
        try:
            body = build_request(spec, "Write it.", settings)
            outcomes[job_id] = client.complete(body, job_id=job_id, stage="BRIEFING_MD")
        except Exception as err:
            outcomes[job_id] = err
        finally:
            client.close()

    cut, kept = CallAbort(), CallAbort()
    threads = [
        threading.Thread(target=call, args=("cut", cut)),
        threading.Thread(target=call, args=("kept", kept)),
    ]
    for thread in threads:
        thread.start()
    assert sim.wait_for_in_flight(2, timeout=5)
    started = time.monotonic()
    cut.abort()
    threads[0].join(timeout=5)
    cut_after = time.monotonic() - started
    threads[1].join(timeout=10)
    assert isinstance(outcomes["cut"], CallCancelled), outcomes["cut"]
    assert cut_after < 1.0, cut_after
    assert not isinstance(outcomes["kept"], Exception), outcomes["kept"]


class _Healthy:
    """The one backend method ``/healthz`` calls."""

    def health(self) -> tuple[str, str]:
        return ("ok", "")


@pytest.fixture
def api() -> Iterator[ApiServer]:
    sock = bind_loopback("127.0.0.1:0")
    server = ApiServer(_Healthy(), sock, token="t" * 32, max_body=4096)  # type: ignore[arg-type]
    server.start()
    yield server
    server.stop()


def test_kept_alive_requests_do_not_wait_for_delayed_acks(api: ApiServer) -> None:
    """Requests after the first on one kept-alive connection answer in a few ms; with Nagle
    on, each waited ~40 ms for the client's delayed ACK of the response head."""
    with requests.Session() as http:
        http.trust_env = False
        times = []
        for _ in range(21):
            started = time.perf_counter()
            assert http.get(api.url + "/healthz", timeout=5).status_code == 200
            times.append(time.perf_counter() - started)
    median_ms = statistics.median(times[1:]) * 1000
    assert median_ms < 20, [round(t * 1000, 1) for t in times]


def test_the_environment_is_read_once_per_client(monkeypatch: Any) -> None:
    """Proxy and CA settings come from the environment when a client is made (requests would
    re-read it on every call, the largest cost per call in the profile); NO_PROXY holds."""
    from briefd.config import Settings
    from briefd.llm.call import ChatClient

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = ChatClient(
        Settings(base_url="https://api.example.invalid/v1"), "https://api.example.invalid/v1"
    )
    assert client._session.trust_env is False
    assert client._session.proxies.get("https") == "http://proxy.invalid:3128"
    assert client._session.verify == "/etc/ssl/certs/ca-certificates.crt"
    monkeypatch.setenv("NO_PROXY", "api.example.invalid")
    bypass = ChatClient(
        Settings(base_url="https://api.example.invalid/v1"), "https://api.example.invalid/v1"
    )
    assert "https" not in bypass._session.proxies


def test_an_unchanged_environment_is_read_once(monkeypatch: Any) -> None:
    """Clients made while the relevant variables do not change share one reading of them (a
    client is made per stage, so a per-client read was still one per call)."""
    import requests

    from briefd.config import Settings
    from briefd.llm import call, endpoint

    reads: list[str] = []
    real = requests.Session.merge_environment_settings

    def counting(self: requests.Session, url: Any, *args: Any) -> Any:
        reads.append(str(url))
        return real(self, url, *args)

    monkeypatch.setattr(requests.Session, "merge_environment_settings", counting)
    call._environment.cache_clear()
    endpoint._endpoint.cache_clear()  # an earlier test's client of this URL holds its reading
    url = "http://127.0.0.1:9/v1"
    for _ in range(5):
        call.ChatClient(Settings(base_url=url), url)
    assert len(reads) == 1
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    client = call.ChatClient(Settings(base_url=url), url)
    assert len(reads) == 2 and client._session.proxies.get("http") == "http://proxy.invalid:3128"
