"""The dashboard through Starlette's test client, on a database seeded by real runs (fake
server + Worker): every page and API route, the API's shapes against the CLI's ``--json``,
escaping, actions and read-only mode, sign-in, CSRF, the Host check."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from harness.cli import app as cli_app
from harness.errors import ConfigError
from harness.store import views
from harness.web import Guard, create_app
from tests.conftest import REPO
from tests.web_seed import HTML, Seeded, runtime, seed

LOCAL = "http://127.0.0.1"
PAGES = [
    *("/", "/parts/overview", "/ledger", "/ledger?by=model&measure=cost", "/runs"),
    *("/runs?status=failed", "/parts/runs", "/schedules", "/report", "/report?since=7d"),
]


def copy_workspace(dest: Path) -> Path:
    for part in ("config", "agents", "tools"):
        shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "var").mkdir()
    return dest


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """One seeded workspace for the module's read-only tests."""
    return seed(copy_workspace(tmp_path_factory.mktemp("web") / "ws"))


def client(ws: Path, **kw: Any) -> Iterator[TestClient]:
    rt = runtime(ws)
    with TestClient(create_app(rt, **kw), base_url=LOCAL) as c:
        yield c
    rt.store.close()


@pytest.fixture
def web(seeded: Seeded) -> Iterator[TestClient]:
    yield from client(seeded.ws)


@pytest.fixture
def fresh(tmp_path: Path) -> Seeded:
    """A seeded workspace of this test's own (for tests that act on runs)."""
    return seed(copy_workspace(tmp_path / "ws"))


def cli_json(ws: Path, *args: str) -> Any:
    res = CliRunner().invoke(cli_app, ["--workspace", str(ws), *args])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def html(c: TestClient, path: str) -> str:
    r = c.get(path, headers={"accept": "text/html"})
    assert r.status_code == 200, (path, r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("text/html")
    return r.text


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_with_the_security_headers(web: TestClient, path: str) -> None:
    r = web.get(path)
    assert r.status_code == 200, r.text[:500]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and r.headers["x-frame-options"] == "DENY"
    assert 'style="' not in r.text  # the CSP would refuse an inline style


def test_overview_shows_budgets_live_runs_and_the_queue(web: TestClient, seeded: Seeded) -> None:
    page = html(web, "/")
    for agent in ("arnold", "veblen", "simmons", "bradlee", "gulbenkian"):
        assert f'data-agent="{agent}"' in page
    assert "of 1,000 (" in page  # simmons' small budget, as a bar with its label
    assert f'href="/runs/{seeded.paused}"' in page  # the paused run is live
    assert f'href="/runs/{seeded.delegated}"' not in page  # a finished run is not
    assert "out of its daily token budget" in page
    assert 'hx-trigger="every 3s"' in page  # it updates itself
    part = html(web, "/parts/overview")
    assert part.startswith('<div id="overview-live"') and "<html" not in part


def test_runs_filter_and_run_page_tree(web: TestClient, seeded: Seeded) -> None:
    failed = html(web, "/runs?status=failed")
    assert f'href="/runs/{seeded.failed}"' in failed
    assert f'href="/runs/{seeded.delegated}"' not in failed
    nightly = html(web, "/runs?schedule=nightly")
    assert f'href="/runs/{seeded.scheduled}"' in nightly
    assert f'href="/runs/{seeded.paused}"' not in nightly
    assert f'href="/runs/{seeded.failed}"' in html(web, "/runs?agent=gulbenkian")
    assert "No runs match." in html(web, "/runs?since=2000-01-01&until=2000-01-02")
    assert web.get("/runs?status=lost").status_code == 400
    page = html(web, f"/runs/{seeded.delegated}")
    tasks = re.findall(r'data-key="task-(\d+)"', page)
    assert len(tasks) == 4  # arnold and the three specialists it consulted
    assert page.count('class="badge s-done"') >= 3 and 'class="badge s-failed"' in page
    assert 'class="stop r-error"' in page  # gulbenkian's model is down
    assert "Cancel run" not in page  # settled: nothing to cancel, no polling
    assert "hx-trigger" not in page.split('id="run-live"')[1].split(">")[0]


def test_a_transcript_shows_tool_calls_and_results(web: TestClient, seeded: Seeded) -> None:
    run = web.get(f"/api/runs/{seeded.delegated}").json()
    root = run["tasks"][0]["id"]
    part = web.get(f"/runs/{seeded.delegated}/tasks/{root}", headers={"hx-request": "true"})
    assert part.status_code == 200 and "<html" not in part.text
    assert part.text.count('class="msg role-tool"') == 3  # each delegate call's result
    assert part.text.count('<div class="call">') == 3 and "delegate" in part.text
    full = html(web, f"/runs/{seeded.delegated}/tasks/{root}")  # without htmx: the whole page
    assert "Delegation tree" in full and 'class="msg role-system"' in full
    assert web.get(f"/runs/{seeded.failed}/tasks/{root}").status_code == 404


def test_model_written_html_is_escaped_everywhere(web: TestClient, seeded: Seeded) -> None:
    run = web.get(f"/api/runs/{seeded.html}").json()
    task = run["tasks"][0]["id"]
    paths = ("/", "/runs", f"/runs/{seeded.html}", f"/runs/{seeded.html}/tasks/{task}")
    for path in (*paths, "/report?since=7d"):
        page = html(web, path)
        assert "<script>alert" not in page and "<img src=x" not in page, path
    page = html(web, f"/runs/{seeded.html}/tasks/{task}")
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # shown as text, not run
    assert "Here is my answer" in page and HTML not in page


def test_schedules_and_report(web: TestClient, seeded: Seeded) -> None:
    page = html(web, "/schedules")
    assert 'id="s-nightly"' in page and "0 3 * * *" in page
    assert f'href="/runs/{seeded.scheduled}"' in page and "tokens per run" in page
    report = html(web, "/report?since=24h")
    assert "<h1>Morning report</h1>" in report and "<table>" in report
    assert "Failed or cancelled (1)" in report
    assert web.get("/report?since=tomorrow").status_code == 400


def test_the_api_has_the_cli_json_shapes(web: TestClient, seeded: Seeded) -> None:
    ws = seeded.ws
    assert web.get("/api/runs").json() == cli_json(ws, "status", "--json")
    run_id = str(seeded.delegated)
    assert web.get(f"/api/runs/{run_id}").json() == cli_json(ws, "status", run_id, "--json")
    task = str(web.get(f"/api/runs/{run_id}").json()["tasks"][0]["id"])
    api = web.get(f"/api/runs/{run_id}/tasks/{task}").json()
    assert api == cli_json(ws, "show", run_id, "--task", task, "--json")
    assert web.get("/api/ledger").json() == cli_json(ws, "ledger", "--json")
    by_model = web.get("/api/ledger?by=model&since=7d").json()
    assert by_model == cli_json(ws, "ledger", "--by", "model", "--since", "7d", "--json")
    assert by_model and all("model" in r for r in by_model)
    forecast = web.get("/api/ledger?forecast=1").json()
    cli_forecast = cli_json(ws, "ledger", "--forecast", "--json")
    assert [f["agent"] for f in forecast] == [f["agent"] for f in cli_forecast]
    assert web.get("/api/schedules").json() == cli_json(ws, "schedules", "list", "--json")
    workers = web.get("/api/workers").json()
    assert set(workers) == {"running", "workers"} and workers["running"] == []
    assert web.get("/api/runs/999").status_code == 404
    assert web.get("/api/runs/999").json() == {"error": "no run 999"}
    assert web.get("/api/ledger?since=last-week").status_code == 400


def test_ledger_csv_download_matches_the_cli(web: TestClient, seeded: Seeded) -> None:
    r = web.get("/api/ledger.csv?since=7d")
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    args = ["--workspace", str(seeded.ws), "ledger", "--since", "7d", "--csv"]
    res = CliRunner().invoke(cli_app, args)
    assert r.text.replace("\r\n", "\n") == res.stdout.replace("\r\n", "\n")
    assert r.text.splitlines()[0].startswith("day,agent,calls,prompt_tokens")


def test_ledger_chart_has_one_series_per_agent(web: TestClient, seeded: Seeded) -> None:
    page = html(web, "/ledger")
    spent = {r["agent"] for r in web.get("/api/ledger").json() if r["total_tokens"]}
    series = re.findall(r'<g class="series" data-series="([^"]+)"', page)
    assert sorted(series) == sorted(spent) and len(series) >= 3
    by_model = html(web, "/ledger?by=model")
    assert re.findall(r'data-series="([^"]+)"', by_model) == ["fake"]
    assert web.get("/ledger?since=2030-01-02&until=2030-01-01").status_code == 400


def test_submit_and_cancel_from_the_pages(fresh: Seeded) -> None:
    for c in client(fresh.ws):
        page = html(c, "/")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        form = {"csrf_token": token.group(1), "agent": "veblen", "goal": "Read <b>this</b>"}
        assert c.post("/runs", data={**form, "csrf_token": "wrong"}).status_code == 403
        r = c.post("/runs", data=form, follow_redirects=False)
        assert r.status_code == 303
        run_id = int(r.headers["location"].rsplit("/", 1)[1])
        run = c.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "queued" and run["agent"] == "veblen"
        page = html(c, f"/runs/{run_id}")
        assert "Cancel run" in page and 'hx-trigger="every 2s"' in page
        foreign = {"origin": "http://evil.example"}
        assert c.post(f"/runs/{run_id}/cancel", data=form, headers=foreign).status_code == 403
        r = c.post(f"/runs/{run_id}/cancel", data=form, headers={"hx-request": "true"})
        assert r.status_code == 200 and r.text.startswith('<div id="run-live"')
        assert "s-cancelled" in r.text and "Cancel run" not in r.text
        assert c.get(f"/api/runs/{run_id}").json()["status"] == "cancelled"


def test_read_only_offers_no_action_and_refuses_them(fresh: Seeded) -> None:
    for c in client(fresh.ws, read_only=True):
        page = html(c, "/")
        assert "read-only" in page and 'action="/runs"' not in page
        assert "Cancel run" not in html(c, f"/runs/{fresh.paused}")
        token = Guard().csrf  # whatever the token, no action
        assert c.post(f"/runs/{fresh.paused}/cancel", data={"csrf_token": token}).status_code == 403
        assert c.post("/api/runs", json={"goal": "x"}).status_code == 403
    st = runtime(fresh.ws).store
    assert st.read_sync(views.get_run, fresh.paused)["status"] == "paused"  # type: ignore[index]


def test_a_token_guards_everything_and_never_shows(
    fresh: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-token-value"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-key-never-shown")
    guard = Guard.for_bind("0.0.0.0", secret)
    for c in client(fresh.ws, guard=guard):
        r = c.get("/runs", headers={"accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/runs"
        assert c.get("/api/runs").status_code == 401 and c.get("/metrics").status_code == 401
        assert c.get("/static/app.css").status_code == 200  # the login page's style
        bearer = {"authorization": f"Bearer {secret}"}
        assert c.get("/api/runs", headers=bearer).status_code == 200
        r = c.post("/api/runs", json={"goal": "by script", "agent": "veblen"}, headers=bearer)
        assert r.status_code == 201 and len(r.json()) == 1
        login = html(c, "/login?next=/ledger")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login)
        assert csrf is not None
        bad = {"csrf_token": csrf.group(1), "token": "guess", "next": "/ledger"}
        assert c.post("/login", data=bad).status_code == 401
        good = {**bad, "token": secret}
        r = c.post("/login", data=good, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ledger"
        cookie = c.cookies.get("harness_dashboard")
        assert cookie and secret not in cookie
        for path in [*PAGES, "/api/runs", "/api/ledger", "/metrics", f"/runs/{fresh.delegated}"]:
            r = c.get(path)
            assert r.status_code == 200, path
            assert secret not in r.text and "sk-live-key" not in r.text, path
        r = c.post("/login", data={**good, "next": "//evil.example/x"}, follow_redirects=False)
        assert r.headers["location"] == "/"  # no open redirect


def test_hosts_and_binding(web: TestClient) -> None:
    assert web.get("/", headers={"host": "attacker.example"}).status_code == 400
    assert web.get("/", headers={"host": "localhost:8700"}).status_code == 200
    with pytest.raises(ConfigError, match="HARNESS_DASHBOARD_TOKEN"):
        Guard.for_bind("0.0.0.0", None)
    assert Guard.for_bind("::1", None).allowed_hosts is not None
    assert Guard.for_bind("10.1.2.3", "t").allowed_hosts is None


def test_serve_refuses_an_open_address_without_a_token(seeded: Seeded) -> None:
    res = CliRunner().invoke(cli_app, ["--workspace", str(seeded.ws), "serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "HARNESS_DASHBOARD_TOKEN" in res.stderr
