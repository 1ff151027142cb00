"""The example page (``examples/web/index.html``) in a real headless browser.

``briefd serve`` runs as a child with ``BRIEFD_UI=true`` against the simulator; Playwright
drives Debian's headless Chromium (the system binary, never a downloaded build) through
the page as a person would: paste the token, submit the example job, watch. The test fails
if the four stages' bars do not go from running to done on the job's event stream, or if
the documents do not appear. Where no Chromium or Playwright is installed (``.ci/setup``
installs both) the tests skip, saying which is missing.
"""

from __future__ import annotations

import json
import shutil
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
