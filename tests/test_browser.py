"""The dashboard in a real browser (Debian's chromium, driven by playwright): ``harness serve``
and ``harness worker`` run as processes on a seeded workspace; the overview, the ledger chart,
a run's tree and transcript, cancelling a live run, and not one console error. The pages'
screenshots are written to docs/ (the README shows one)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.store import views
from tests.conftest import REPO
from tests.processes import HARNESS, Procs, wait_for
from tests.test_web import copy_workspace
from tests.web_seed import Seeded, configure, runtime, seed

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
# screenshots land in the test's temp folder; DASHBOARD_SHOTS=docs refreshes the README's
SHOTS = os.environ.get("DASHBOARD_SHOTS")


@dataclass
class Site:
    url: str
    seeded: Seeded
    live_run: int
    procs: Procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The seeded workspace served by ``harness serve``, with a worker stuck on a slow model
    call (so one run is live), all as processes."""
    tmp = tmp_path_factory.mktemp("browser")
    seeded = seed(copy_workspace(tmp / "ws"), history=20)  # a ledger with a past
    procs = Procs(tmp)
    try:
        slow = procs.fake("--ttft-s", "120")
        configure(seeded.ws, slow.url, slow.url)
        st = runtime(seeded.ws).store
        live, _ = st.write_sync(_submit, "Read the whole library (slowly).")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
        start(procs, tmp / "worker.log", env | {"HARNESS_WORKER__LEASE_S": "3"},
              seeded.ws, "worker", "--concurrency", "2")  # fmt: skip
        wait_for(lambda: st.read_sync(views.live_work)["running"], 30, "the worker to claim")
        st.close()
        port = free_port()
        start(procs, tmp / "serve.log", env, seeded.ws, "serve", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 30, "harness serve to listen")
        yield Site(url, seeded, live, procs)
    finally:
        procs.stop_all()


def start(procs: Procs, log: Path, env: dict[str, str], ws: Path, *args: str) -> None:
    """``harness -w WS ARGS`` in the background, its output in ``log``."""
    with log.open("wb") as out:
        cmd = [str(HARNESS), "-w", str(ws), "--log-json", *args]
        procs.started.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out))


def _submit(conn: Any, goal: str) -> tuple[int, int]:
    from harness.store import queue

    return queue.create_run(conn, goal, "veblen", max_attempts=1)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "make setup installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that records console errors and uncaught exceptions; none may happen."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: _refuse(d, errors))
    yield pg
    context.close()
    assert errors == []


def _refuse(dialog: Any, errors: list[str]) -> None:
    errors.append(f"dialog: {dialog.message}")  # an alert() is a script that ran
    dialog.dismiss()


def _accept(dialog: Any, seen: list[str]) -> None:
    seen.append(dialog.message)
    dialog.accept()


def shot(page: Any, name: str, tmp: Path) -> None:
    folder = REPO / SHOTS if SHOTS else tmp
    page.screenshot(path=str(folder / name), full_page=True)
    assert (folder / name).stat().st_size > 10_000  # a picture, not a blank


def test_overview_shows_every_agent_against_its_budget(
    site: Site, page: Any, tmp_path: Path
) -> None:
    page.goto(site.url + "/")
    rows = page.locator("tr.agent-row")
    assert rows.count() == 5
    assert page.locator("tr.agent-row svg.bar rect.used").count() == 5
    assert page.locator(f'a[href="/runs/{site.live_run}"]').count() >= 1  # live, in two lists
    page.wait_for_function("() => window.htmx !== undefined")
    with page.expect_response(lambda r: "/parts/overview" in r.url):  # it updates itself
        pass
    assert page.locator("tr.agent-row").count() == 5  # and is whole after the swap
    shot(page, "dashboard-overview.png", tmp_path)


def test_ledger_chart_draws_one_series_per_agent(site: Site, page: Any, tmp_path: Path) -> None:
    page.goto(site.url + "/ledger")
    series = page.locator("#ledger-chart g.series")
    names = sorted(series.nth(i).get_attribute("data-series") for i in range(series.count()))
    assert names == ["arnold", "bradlee", "simmons", "veblen"]  # the agents that spent tokens
    for i in range(series.count()):
        box = series.nth(i).locator("rect").first.bounding_box()
        assert box is not None and box["height"] > 0 and box["width"] > 0  # really drawn
    assert page.locator(".legend span").count() == 4
    shot(page, "dashboard-ledger.png", tmp_path)


def test_run_page_tree_expands_and_a_transcript_opens(
    site: Site, page: Any, tmp_path: Path
) -> None:
    page.goto(site.url + f"/runs/{site.seeded.delegated}")
    details = page.locator("details.task")
    assert details.count() == 4
    root = details.first
    assert root.get_attribute("open") is not None
    root.locator("> summary .tid").click()  # collapse the root...
    assert root.get_attribute("open") is None
    assert not page.locator("details.task details.task").first.is_visible()
    root.locator("> summary .tid").click()  # ...and expand it again
    assert page.locator("details.task details.task").first.is_visible()
    child = page.locator("details.task details.task").first
    child.locator("> summary a.open-transcript").click()
    page.wait_for_selector("#transcript .msg.role-assistant")
    assert page.locator("#transcript .msg").count() >= 3  # system, task, answer
    root.locator("> summary a.open-transcript").click()  # the root's: delegate calls
    page.wait_for_selector("#transcript .msg.role-tool")
    assert page.locator("#transcript .call").count() == 3
    shot(page, "dashboard-run.png", tmp_path)


def test_model_html_is_inert_in_the_browser(site: Site, page: Any) -> None:
    run = httpx.get(site.url + f"/api/runs/{site.seeded.html}").json()
    page.goto(site.url + f"/runs/{site.seeded.html}/tasks/{run['tasks'][0]['id']}")
    assert page.locator("#transcript script, #transcript img").count() == 0
    assert "<script>alert(2)</script>" in page.locator("#transcript").inner_text()


def test_cancel_a_live_run_from_its_page(site: Site, browser: Any) -> None:
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    confirmations: list[str] = []
    pg.on("dialog", lambda d: _accept(d, confirmations))
    pg.goto(site.url + f"/runs/{site.live_run}")
    assert pg.locator("#run-live .run-head .badge").inner_text() == "running"
    pg.locator("#cancel-run").click()
    pg.wait_for_selector("#run-live .run-head .badge.s-cancelled")
    assert confirmations == [f"Cancel run #{site.live_run} and every unfinished task in it?"]
    assert pg.locator("#cancel-run").count() == 0
    st = runtime(site.seeded.ws).store
    assert st.read_sync(views.get_run, site.live_run)["status"] == "cancelled"  # type: ignore[index]
    # the worker notices at its next heartbeat and stops working on it
    wait_for(lambda: not st.read_sync(views.live_work)["running"], 20, "the worker to let go")
    st.close()
    context.close()
    assert errors == []
