"""What each page shows, read in one transaction through the CLI's own query functions.

Every function here is a plain function of a read-only connection that *composes* the
read models (``store.views``, ``ledger.reads``, ``schedules.describe``): none holds a query of
its own, so the dashboard, the JSON API and the CLI always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ..ledger import day_of, reads
from ..schedules import describe
from ..settings import Settings
from ..store import views
from ..store.queue import ACTIVE
from ..store.schema import TaskStatus
from ..usage import Budget
from .charts import budget_bar, days_between, stacked

__all__ = ["ledger_page", "overview", "run_page", "schedules_page", "stop_reason"]

LIVE = [s.value for s in ACTIVE]


def overview(
    conn: Connection, settings: Settings, budgets: Mapping[str, Budget], now: float
) -> dict[str, Any]:
    """Today per agent against budgets, live runs and tasks, the queue, workers, schedules
    that need a look."""
    today = day_of(now, settings.tz)
    used = {r["agent"]: r for r in reads.rows(conn, budgets, since=today, until=today)}
    pace = {f["agent"]: f for f in reads.forecast(conn, budgets, settings.tz, now)}
    agents = [_agent_today(a, b, used.get(a), pace.get(a)) for a, b in sorted(budgets.items())]
    depth = dict.fromkeys(LIVE, 0)
    for row in views.task_counts(conn):
        if row["status"] in depth:
            depth[row["status"]] += row["tasks"]
    watch = [s for s in describe(conn, settings, now) if s["overdue"] or _failing(s)]
    return {
        "today": today,
        "agents": agents,
        "totals": {
            "tokens": sum(a["tokens"] for a in agents),
            "cost": sum(a["cost"] for a in agents),
            "calls": sum(a["calls"] for a in agents),
        },
        "runs": views.list_runs(conn, status=LIVE, limit=25),
        "live": views.live_work(conn),
        "depth": depth,
        "schedules": watch,
    }


def _failing(schedule: Mapping[str, Any]) -> bool:
    return schedule["last_run_status"] in (TaskStatus.FAILED, TaskStatus.CANCELLED)


def _agent_today(
    agent: str, budget: Budget, row: Mapping[str, Any] | None, pace: Mapping[str, Any] | None
) -> dict[str, Any]:
    tokens = int(row["total_tokens"]) if row else 0
    cost = float(row["cost_usd"]) if row else 0.0
    return {
        "agent": agent,
        "tokens": tokens,
        "cost": cost,
        "calls": int(row["calls"]) if row else 0,
        "errors": int(row["error_calls"]) if row else 0,
        "token_bar": budget_bar(tokens, budget.tokens),
        "cost_bar": budget_bar(cost, budget.cost_usd, money=True) if budget.cost_usd else None,
        "pace": pace["tokens_per_hour"] if pace else None,
        "hits_at": pace["hits_budget_at"] if pace else None,
        "exhausted": bool(pace and pace["exhausted"]),
    }


def ledger_page(
    conn: Connection,
    budgets: Mapping[str, Budget],
    settings: Settings,
    *,
    since: str,
    until: str,
    by: str,
    measure: str,
) -> dict[str, Any]:
    """Daily stacked bars per agent (or model), the agent x model table, the forecast."""
    detail = reads.rows(conn, budgets, since=since, until=until, by_model=True)
    key = "model" if by == "model" else "agent"
    field = "cost_usd" if measure == "cost" else "total_tokens"
    palette = sorted(settings.models) if by == "model" else sorted(budgets)
    values: dict[str, dict[str, float]] = {}
    for r in detail:
        series = values.setdefault(r[key], {})
        series[r["day"]] = series.get(r["day"], 0.0) + r[field]
    return {
        "chart": stacked(days_between(since, until), values, palette),
        "table": _agent_model_table(detail),
        "forecast": reads.forecast(conn, budgets, settings.tz),
    }


def _agent_model_table(detail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("calls", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens",
            "cost_usd", "error_calls", "estimated_calls")  # fmt: skip
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in detail:
        empty = {"agent": r["agent"], "model": r["model"], **dict.fromkeys(keys, 0)}
        row = table.setdefault((r["agent"], r["model"]), empty)
        for k in keys:
            row[k] += r[k]
    return [table[k] for k in sorted(table)]


def run_page(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """The run with its task tree, each task with why it stopped."""
    run = views.get_run(conn, run_id)
    if run is None:
        return None
    _annotate(run["tasks"])
    return run


def _annotate(nodes: list[dict[str, Any]]) -> None:
    for node in nodes:
        node["stop"] = stop_reason(node)
        _annotate(node["children"])


def stop_reason(task: Mapping[str, Any]) -> str | None:
    """Why a task stopped, in a word (budget, loop, limit, error, cancelled, or retrying),
    from its status and the loop's own wording; None while it runs or when it is done."""
    status, text = task["status"], str(task.get("error") or task.get("reason") or "")
    if status == TaskStatus.PAUSED:
        return "budget"
    if status == TaskStatus.CANCELLED:
        return "cancelled"
    if status == TaskStatus.QUEUED and task.get("attempts") and text:
        return "retrying"
    if status != TaskStatus.FAILED:
        return None
    if text.startswith("loop detected"):
        return "loop"
    if "max_steps" in text or "wall-clock limit" in text:
        return "limit"
    return "error"


def find_task(nodes: list[dict[str, Any]], task_id: int) -> dict[str, Any] | None:
    for node in nodes:
        if node["id"] == task_id:
            return node
        found = find_task(node["children"], task_id)
        if found is not None:
            return found
    return None


def schedules_page(
    conn: Connection, settings: Settings, now: float, per_schedule: int = 10
) -> list[dict[str, Any]]:
    """Each schedule with its recent runs and their tokens."""
    out = []
    for s in describe(conn, settings, now):
        recent = views.list_runs(conn, schedule=s["name"], limit=per_schedule)
        tokens = [r["usage"]["total_tokens"] for r in recent]
        out.append(s | {"runs": recent, "avg_tokens": sum(tokens) / len(tokens) if tokens else 0})
    return out


def local_time(iso: str | None, settings: Settings) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` in the workspace's zone ('' for None)."""
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(settings.tz).strftime("%Y-%m-%d %H:%M:%S")
