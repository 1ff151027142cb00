"""The example page (``examples/web/index.html``) in a real headless browser.

``briefd serve`` runs as a child with ``BRIEFD_UI=true`` against the simulator; Playwright
drives Debian's headless Chromium (the system binary, never a downloaded build) through
the page as a person would: paste the token, submit the example job, watch. The test fails
if the four stages' bars do not go from running to done on the job's event stream, or if
the documents do not appear. Where no Chromium or Playwright is installed (``.ci/setup``
installs both) the tests skip, saying which is missing.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon

from briefd.sim.server import Fault, SimProfile, SimServer

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
WAIT_MS = 60_000  # generous: a loaded 2-core machine; a pass takes a second or two
_BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright is not installed (.ci/setup installs it: pip install playwright)",
)


def _chromium() -> str:
    for name in _BROWSERS:
        found = shutil.which(name) or shutil.which(name, path="/usr/lib/chromium")
        if found:
            return found
    pytest.skip(
        "no headless Chromium on this machine (.ci/setup installs it: "
        "apt-get install chromium-headless-shell)"
    )


# A recorder installed before the page's own script (through the browser's debugging
# protocol, so the page's CSP does not apply to it): every state each bar goes through,
# and any script error or CSP violation the page meets.
_RECORDER = """
window.__seen = {};
window.__problems = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__problems.push("CSP: " + e.violatedDirective));
window.addEventListener("error", (e) => window.__problems.push("error: " + e.message));
new MutationObserver((records) => {
  for (const r of records) {
    if (r.attributeName !== "data-state" || !r.target.dataset) continue;
    const stage = r.target.dataset.stage;
    (window.__seen[stage] = window.__seen[stage] || []).push(r.target.dataset.state);
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def web_sim() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.02)) as server:  # stages of 100-140 ms: bars visibly move
        yield server


@pytest.fixture(scope="module")
def web_daemon(web_sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("web"), web_sim.base_url, ui="true")
    daemon.start()
    yield daemon
    daemon.kill()


@pytest.fixture
def page(browser: Any, web_daemon: Daemon) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(_RECORDER)
    page.goto(f"{web_daemon.url}/ui/")
    page.fill("#token", web_daemon.token)
    yield page
    context.close()


def _job(page: Any) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(page.input_value("#job"))
    return job


def _submit(page: Any, job: dict[str, Any]) -> None:
    page.fill("#job", json.dumps(job, indent=2))
    page.click("#submit")


def _wait_done(page: Any, daemon: Daemon) -> None:
    try:
        # Locators, not wait_for_function: that evaluates a string in the page, which the
        # page's CSP (rightly) forbids.
        page.locator("#docs article.doc").nth(len(STAGES) - 1).wait_for(timeout=WAIT_MS)
    except sync_api.TimeoutError:
        raise AssertionError(
            f"the page did not show the documents; status: {page.text_content('#status')!r}; "
            f"bars: {page.evaluate('window.__seen')}; problems: "
            f"{page.evaluate('window.__problems')}\n{daemon.log()[-3000:]}"
        ) from None


def test_the_example_job_draws_four_bars_to_done_then_the_documents(
    page: Any, web_daemon: Daemon
) -> None:
    """The example job as the page offers it (its id made unique): each stage's bar is
    drawn running, then done, from the stream's events; the overall bar reaches 100 %;
    the documents are the job's own (Markdown as text, JSON pretty-printed)."""
    job = _job(page)
    job["job_id"] = "web-example-1"
    _submit(page, job)
    _wait_done(page, web_daemon)
    seen: dict[str, list[str]] = page.evaluate("window.__seen")
    for stage in STAGES:
        states = seen.get(stage, [])
        assert "running" in states and states[-1] == "done", (stage, states)
        assert states.index("running") < states.index("done"), (stage, states)
    bars = page.eval_on_selector_all(
        ".bar", "rows => rows.map(r => [r.dataset.stage, r.dataset.state, r.dataset.percent])"
    )
    assert sorted(bars) == sorted(
        [["*", "done", "100"], *([stage, "done", "100"] for stage in STAGES)]
    ), bars
    assert page.evaluate("window.__problems") == []
    result = web_daemon.client().result("web-example-1", timeout=30)
    shown = dict(
        page.eval_on_selector_all(
            "#docs article.doc", "docs => docs.map(d => [d.dataset.stage, d.innerText])"
        )
    )
    assert set(shown) == set(STAGES)
    briefing = result.documents["BRIEFING_MD"]
    assert isinstance(briefing, str) and briefing.strip().splitlines()[0] in shown["BRIEFING_MD"]
    procurement = page.text_content('#docs article[data-stage="PROCUREMENT_JSON"] pre')
    assert json.loads(procurement or "") == result.documents["PROCUREMENT_JSON"]
    assert "\n  " in (procurement or "")  # pretty-printed
    assert "succeeded" in (page.text_content("#status") or "")
    assert web_daemon.token not in page.content()  # typed into a password field, never shown
    assert f"example page: {web_daemon.url}/ui/" in web_daemon.log_path.read_text("utf-8")


def test_server_text_is_never_read_as_html(
    page: Any, web_daemon: Daemon, web_sim: SimServer
) -> None:
    """PROCUREMENT_JSON fails and falls back to the job's own figures, which carry markup:
    its bar says so, and the markup is shown as text, never made into elements."""
    web_sim.inject(Fault(stage="PROCUREMENT_JSON", status=400, times=None))
    try:
        job = _job(page)
        job["job_id"] = "web-markup-1"
        job["procurement_metrics"]["summary"] = '<img src=x onerror="window.__owned=1"><b>bold</b>'
        _submit(page, job)
        _wait_done(page, web_daemon)
    finally:
        web_sim.reset()
    seen: dict[str, list[str]] = page.evaluate("window.__seen")
    assert seen["PROCUREMENT_JSON"][-1] == "fell-back", seen
    assert page.locator("#docs img, #docs b").count() == 0
    assert "<img src=x" in (page.text_content('#docs article[data-stage="PROCUREMENT_JSON"]') or "")
    assert page.evaluate("window.__owned") is None
    assert page.evaluate("window.__problems") == []


def test_the_page_says_why_when_the_token_is_wrong(page: Any) -> None:
    """A wrong token: the API's 401 is shown in the status line, and no bar moves."""
    page.fill("#token", "not-the-token")
    page.click("#submit")
    page.locator('#status[data-kind="error"]').wait_for(timeout=WAIT_MS)
    assert "401" in (page.text_content("#status") or "")
    assert page.evaluate("window.__seen") == {}


def test_page_file_is_the_one_served(repo: Path) -> None:
    """The packaged page (briefd/ui, a link) is examples/web/index.html."""
    from briefd.daemon.http_ui import PAGE

    assert PAGE.resolve() == (repo / "examples" / "web" / "index.html").resolve()


# -- a page on another origin ----------------------------------------------------------------

_FOLLOW = """
async ({ api, token, job }) => {
  const auth = { Authorization: "Bearer " + token };
  let answer;
  try {
    answer = await fetch(api + "/v1/jobs", {
      method: "POST", headers: { ...auth, "Content-Type": "application/json" },
      body: JSON.stringify(job) });
  } catch (e) {
    return { blocked: String(e) };  // the browser refused to show the answer: CORS
  }
  const grant = await (await fetch(
    `${api}/v1/jobs/${job.job_id}/stream-token`, { method: "POST", headers: auth })).json();
  const url = `${api}/v1/jobs/${job.job_id}/events?access_token=` + encodeURIComponent(grant.token);
  return await new Promise((resolve) => {
    const seen = [];
    const source = new EventSource(url);
    for (const type of ["StageStarted", "StageSucceeded", "JobCompleted"]) {
      source.addEventListener(type, (m) => {
        seen.push(type + ":" + (JSON.parse(m.data).stage || ""));
        if (type === "JobCompleted") { source.close(); resolve({ status: answer.status, seen }); }
      });
    }
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        resolve({ status: answer.status, seen, closed: true });
      }
    };
  });
}
"""


class _Blank(http.server.BaseHTTPRequestHandler):
    """Another origin's page: empty, so that script can run there."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blank)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_a_page_on_a_listed_origin_follows_a_job_with_eventsource(
    browser: Any,
    web_sim: SimServer,
    other_origin: int,
    tmp_path: Path,
    daemons: list[Daemon],
    repo: Path,
) -> None:
    """BRIEFD_ALLOWED_ORIGINS names http://127.0.0.1:PORT: a page there submits (a preflighted
    POST with Authorization), takes a stream token and follows the job with EventSource to
    its end. The same page at http://localhost:PORT, another origin, is refused."""
    listed = f"http://127.0.0.1:{other_origin}"
    daemon = Daemon(tmp_path, web_sim.base_url, allowed_origins=listed)
    daemons.append(daemon)
    daemon.start()
    job = json.loads((repo / "examples" / "northwind-briefing.json").read_text(encoding="utf-8"))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{listed}/")
        args = {"api": daemon.url, "token": daemon.token, "job": {**job, "job_id": "cors-1"}}
        followed = page.evaluate(_FOLLOW, args)
        assert followed["status"] == 202, followed  # the POST's HTTP status: accepted
        assert followed["seen"][-1] == "JobCompleted:", followed
        for stage in STAGES:
            assert followed["seen"].index(f"StageStarted:{stage}") < followed["seen"].index(
                f"StageSucceeded:{stage}"
            ), followed
        page.goto(f"http://localhost:{other_origin}/")
        refused = page.evaluate(_FOLLOW, {**args, "job": {**job, "job_id": "cors-2"}})
        assert "blocked" in refused, refused
    finally:
        context.close()
    assert daemon.client().status("cors-1").status.value == "succeeded"
    ids = {j.job_id for j in daemon.client().jobs()}
    assert "cors-2" not in ids  # refused before it was read
