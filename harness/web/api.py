"""The JSON API (the CLI's ``--json`` shapes, docs/cli.md), the ledger as CSV, ``/metrics``.

``GET /api/runs`` = ``harness status --json`` (with the runs page's filters), ``/api/runs/{id}``
= ``harness status ID --json``, ``/api/runs/{id}/tasks/{task}`` = ``harness show ID --task T
--json``, ``/api/ledger`` = ``harness ledger --json`` (same options; ``forecast=1`` for
``--forecast``), ``/api/ledger.csv`` = ``--csv``, ``/api/workers`` = the live work of ``harness
status``, ``/api/schedules`` = ``harness schedules list --json``. ``POST /api/runs`` takes
``{"goal", "agent"?}`` (or a list of them) and answers the ids like ``harness submit --json``;
``POST /api/runs/{id}/cancel`` answers ``{"run_id", "cancelled"}``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Connection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import clock
from ..ledger import reads
from ..schedules import describe
from ..store import queue, views
from .board import dashboard
from .pages import ledger_range, run_filters
from .reading import find_task

__all__ = ["routes"]


async def api_runs(request: Request) -> Response:
    board = dashboard(request)
    return JSONResponse(await board.rt.store.read(views.list_runs, **run_filters(request, board)))


async def api_run(request: Request) -> Response:
    run_id = int(request.path_params["run_id"])
    data = await dashboard(request).rt.store.read(views.get_run, run_id)
    if data is None:
        raise HTTPException(404, f"no run {run_id}")
    return JSONResponse(data)


async def api_transcript(request: Request) -> Response:
    run_id, task_id = int(request.path_params["run_id"]), int(request.path_params["task_id"])
    store = dashboard(request).rt.store
    run = await store.read(views.get_run, run_id)
    if run is None or find_task(run["tasks"], task_id) is None:
        raise HTTPException(404, f"no task {task_id} in run {run_id}")
    return JSONResponse(await store.read(views.transcript, task_id))


async def _ledger_rows(request: Request) -> list[dict[str, Any]]:
    board = dashboard(request)
    q = request.query_params
    if q.get("by") not in (None, "", "model"):
        raise HTTPException(400, f"by takes 'model', not {q['by']!r}")
    limits = board.budgets()
    if q.get("forecast") in ("1", "true"):
        return await board.rt.store.read(reads.forecast, limits, board.rt.settings.tz)
    explicit = any(q.get(k) for k in ("day", "since", "until", "days"))
    since, until = ledger_range(request, board) if explicit else (None, None)
    run_id = int(q["run"]) if q.get("run", "").isdigit() else None
    return await board.rt.store.read(reads.rows, limits, since=since, until=until,
                                     agent=q.get("agent") or None, run_id=run_id,
                                     by_model=q.get("by") == "model")  # fmt: skip


async def api_ledger(request: Request) -> Response:
    return JSONResponse(await _ledger_rows(request))


async def api_ledger_csv(request: Request) -> Response:
    rows = await _ledger_rows(request)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    headers = {"Content-Disposition": 'attachment; filename="harness-ledger.csv"'}
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)


async def api_workers(request: Request) -> Response:
    return JSONResponse(await dashboard(request).rt.store.read(views.live_work))


async def api_schedules(request: Request) -> Response:
    board = dashboard(request)
    return JSONResponse(await board.rt.store.read(describe, board.rt.settings, clock.now()))


async def metrics(request: Request) -> Response:
    """Prometheus text format, read from the database (in a thread: the scrape is sync)."""
    registry = dashboard(request).registry
    body = await anyio.to_thread.run_sync(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# -- actions ---------------------------------------------------------------------------------


async def _may_act(request: Request) -> None:
    board = dashboard(request)
    if board.read_only:
        raise HTTPException(403, "this dashboard is read-only (harness serve --read-only)")
    if not board.guard.may_act(request, None):
        raise HTTPException(403, "send the bearer token, or the page's X-CSRF-Token")


async def api_submit(request: Request) -> Response:
    await _may_act(request)
    board = dashboard(request)
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    items = body if isinstance(body, list) else [body]
    board.rt.reload_team()
    goals = [_goal(item, board.rt.team.names(), board.rt.settings.chief) for item in items]
    attempts = board.rt.settings.worker.max_attempts

    def enqueue(conn: Connection) -> list[int]:
        return [queue.create_run(conn, g, a, max_attempts=attempts)[0] for a, g in goals]

    return JSONResponse(await board.rt.store.write(enqueue), status_code=201)


def _goal(item: Any, agents: list[str], chief: str) -> tuple[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("goal"), str) or not item["goal"]:
        raise HTTPException(400, 'each item needs a non-empty "goal" (and may name "agent")')
    agent = item.get("agent") or chief
    if agent not in agents:
        raise HTTPException(400, f"unknown agent {agent!r} (known: {', '.join(agents)})")
    return agent, item["goal"].strip()


async def api_cancel(request: Request) -> Response:
    await _may_act(request)
    run_id = int(request.path_params["run_id"])
    store = dashboard(request).rt.store
    if await store.read(views.get_run, run_id) is None:
        raise HTTPException(404, f"no run {run_id}")
    n = await store.write(queue.cancel_run, run_id, "cancelled through the API")
    return JSONResponse({"run_id": run_id, "cancelled": n})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/runs", api_runs),
        Route("/api/runs", api_submit, methods=["POST"]),
        Route("/api/runs/{run_id:int}", api_run),
        Route("/api/runs/{run_id:int}/cancel", api_cancel, methods=["POST"]),
        Route("/api/runs/{run_id:int}/tasks/{task_id:int}", api_transcript),
        Route("/api/ledger", api_ledger),
        Route("/api/ledger.csv", api_ledger_csv),
        Route("/api/workers", api_workers),
        Route("/api/schedules", api_schedules),
        Route("/metrics", metrics),
    ]
