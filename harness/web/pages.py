"""The HTML pages, their live fragments (``/parts/...``, polled by htmx) and the form actions.

A page and its fragment render the same template block from the same read, so what updates
live is exactly what the page showed. Actions are POST with the CSRF token; in read-only mode
they answer 403 and the pages offer none.
"""

from __future__ import annotations

import re
from typing import Any

from markdown_it import MarkdownIt
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .. import clock
from ..ledger import day_of, days_back
from ..report import build_report
from ..store import queue, views
from ..store.schema import TERMINAL, TaskStatus
from . import reading
from .board import Dashboard, dashboard
from .security import COOKIE, safe_next

__all__ = ["not_found", "routes"]

DEFAULT_DAYS = 30
RUN_LIMIT = 100
REPORT_WINDOWS = ("6h", "12h", "24h", "3d", "7d")
STATUSES = [s.value for s in TaskStatus]
MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML is escaped
_ALIGN = re.compile(r' style="text-align:(left|right|center)"')


def _hx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _int(value: str | None, what: str, default: int | None = None) -> int | None:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{what}: not a number: {value!r}") from None


# -- overview --------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    board = dashboard(request)
    data = await _overview(board)
    name = "_overview_live.html" if request.url.path.startswith("/parts/") else "overview.html"
    return board.render(request, name, **data)


async def _overview(board: Dashboard) -> dict[str, Any]:
    now = clock.now()
    return await board.rt.store.read(reading.overview, board.rt.settings, board.budgets(), now)


# -- ledger ----------------------------------------------------------------------------------


def ledger_range(request: Request, board: Dashboard) -> tuple[str, str]:
    """``since``/``until`` (dates, or ``since=7d``) or ``days=N``; default the last 30 days."""
    q, now, tz = request.query_params, clock.now(), board.rt.settings.tz
    today = day_of(now, tz)
    days = _int(q.get("days"), "days", DEFAULT_DAYS) or DEFAULT_DAYS
    try:
        since, until = clock.period_days(q.get("day"), q.get("since"), q.get("until"), now, tz)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    until = until or today
    since = since or days_back(until, min(max(days, 1), 366) - 1)
    if since > until:
        raise HTTPException(400, f"since ({since}) is after until ({until})")
    return since, until


async def ledger(request: Request) -> Response:
    board = dashboard(request)
    since, until = ledger_range(request, board)
    by = "model" if request.query_params.get("by") == "model" else "agent"
    measure = "cost" if request.query_params.get("measure") == "cost" else "tokens"
    data = await board.rt.store.read(reading.ledger_page, board.budgets(), board.rt.settings,
                                     since=since, until=until, by=by, measure=measure)  # fmt: skip
    return board.render(request, "ledger.html", since=since, until=until, by=by,
                        measure=measure, **data)  # fmt: skip


# -- runs ------------------------------------------------------------------------------------


def run_filters(request: Request, board: Dashboard) -> dict[str, Any]:
    """The runs filters of a query string: status, agent, schedule, since/until (12h, ISO)."""
    q, now, tz = request.query_params, clock.now(), board.rt.settings.tz
    out: dict[str, Any] = {"limit": min(_int(q.get("limit"), "limit", 50) or 50, 500)}
    if q.get("status"):
        if q["status"] not in STATUSES:
            raise HTTPException(400, f"status: one of {', '.join(STATUSES)}")
        out["status"] = q["status"]
    for key in ("agent", "schedule"):
        if q.get(key):
            out[key] = q[key]
    for key in ("since", "until"):
        if q.get(key):
            try:
                out[key] = clock.parse_time(q[key], now, tz, end=key == "until")
            except ValueError as exc:
                raise HTTPException(400, f"{key}: {exc}") from None
    return out


async def runs(request: Request) -> Response:
    board = dashboard(request)
    filters = run_filters(request, board)
    data = await board.rt.store.read(views.list_runs, **filters)
    name = "_runs_table.html" if request.url.path.startswith("/parts/") else "runs.html"
    shown = {k: request.query_params.get(k, "") for k in ("status", "agent", "schedule", "since",
                                                           "until")}  # fmt: skip
    query = str(request.query_params)
    return board.render(request, name, runs=data, filters=shown, query=query,
                        statuses=STATUSES, limit=filters["limit"])  # fmt: skip


async def run(request: Request) -> Response:
    board = dashboard(request)
    run_id = int(request.path_params["run_id"])
    data = await board.rt.store.read(reading.run_page, run_id)
    if data is None:
        raise HTTPException(404, f"no run {run_id}")
    live = request.url.path.startswith("/parts/")
    settled = data["status"] in TERMINAL
    return board.render(request, "_run_live.html" if live else "run.html", run=data,
                        settled=settled, transcript=None, task=None)  # fmt: skip


async def transcript(request: Request) -> Response:
    board = dashboard(request)
    run_id, task_id = int(request.path_params["run_id"]), int(request.path_params["task_id"])
    data = await board.rt.store.read(reading.run_page, run_id)
    task = reading.find_task(data["tasks"], task_id) if data else None
    if data is None or task is None:
        raise HTTPException(404, f"no task {task_id} in run {run_id}")
    msgs = await board.rt.store.read(views.transcript, task_id)
    name = "_transcript.html" if _hx(request) else "run.html"
    settled = data["status"] in TERMINAL
    return board.render(request, name, run=data, task=task, transcript=msgs, settled=settled)


# -- schedules and the report ----------------------------------------------------------------


async def schedules_page(request: Request) -> Response:
    board = dashboard(request)
    data = await board.rt.store.read(reading.schedules_page, board.rt.settings, clock.now())
    return board.render(request, "schedules.html", schedules=data)


async def report(request: Request) -> Response:
    board = dashboard(request)
    since_text = request.query_params.get("since", "12h")
    now = clock.now()
    try:
        since = clock.parse_time(since_text, now, board.rt.settings.tz)
    except ValueError as exc:
        raise HTTPException(400, f"since: {exc}") from None
    markdown = await board.rt.store.read(build_report, board.rt.settings, since, now,
                                         board.budgets())  # fmt: skip
    html = _ALIGN.sub(r' class="a-\1"', MARKDOWN.render(markdown))  # no inline style (CSP)
    return board.render(request, "report.html", html=html, since=since_text,
                        windows=REPORT_WINDOWS)  # fmt: skip


# -- actions ---------------------------------------------------------------------------------


async def _action_form(request: Request, *, acts: bool = True) -> dict[str, str]:
    """The form of a POST that may act: 403 without the CSRF token, or in read-only mode
    when it ``acts`` on runs (signing out is not acting)."""
    board = dashboard(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if acts and board.read_only:
        raise HTTPException(403, "this dashboard is read-only (harness serve --read-only)")
    if not board.guard.may_act(request, fields.get("csrf_token")):
        raise HTTPException(403, "missing or wrong CSRF token (reload the page)")
    return fields


async def submit(request: Request) -> Response:
    board = dashboard(request)
    fields = await _action_form(request)
    goal, agent = fields.get("goal", "").strip(), fields.get("agent") or board.rt.settings.chief
    if not goal:
        raise HTTPException(400, "the goal is empty")
    board.rt.reload_team()
    if agent not in board.rt.team:
        raise HTTPException(400, f"unknown agent {agent!r}")
    attempts = board.rt.settings.worker.max_attempts
    run_id, _ = await board.rt.store.write(queue.create_run, goal, agent, max_attempts=attempts)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


async def cancel(request: Request) -> Response:
    board = dashboard(request)
    await _action_form(request)
    run_id = int(request.path_params["run_id"])
    if await board.rt.store.read(views.get_run, run_id) is None:
        raise HTTPException(404, f"no run {run_id}")
    await board.rt.store.write(queue.cancel_run, run_id, "cancelled from the dashboard")
    if _hx(request):
        request.scope["path"] = f"/parts/runs/{run_id}"
        return await run(request)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


# -- signing in ------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    board = dashboard(request)
    target = safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return board.render(request, "login.html", target=target, failed=False)
    fields = await _action_form(request, acts=False)
    target = safe_next(fields.get("next"))
    if not board.guard.token_ok(fields.get("token", "")):
        return board.render(request, "login.html", status=401, target=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, board.guard.session(), max_age=30 * 86400, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    await _action_form(request, acts=False)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


async def not_found(request: Request, exc: Exception) -> Response:
    """An error as a page, or as ``{"error": ...}`` under /api/."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": detail}, status_code=status)
    board = dashboard(request)
    return board.render(request, "error.html", status=status, code=status, detail=detail)


def routes() -> list[BaseRoute]:
    return [
        Route("/", overview),
        Route("/parts/overview", overview),
        Route("/ledger", ledger),
        Route("/runs", runs),
        Route("/runs", submit, methods=["POST"]),
        Route("/parts/runs", runs),
        Route("/runs/{run_id:int}", run),
        Route("/parts/runs/{run_id:int}", run),
        Route("/runs/{run_id:int}/cancel", cancel, methods=["POST"]),
        Route("/runs/{run_id:int}/tasks/{task_id:int}", transcript),
        Route("/schedules", schedules_page),
        Route("/report", report),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
