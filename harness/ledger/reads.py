"""Reading the ledger: per day and agent (or model) tables, and budget forecasts.

The default table reads the daily roll-ups (one indexed row per agent and day). Asking for a
run, or for a breakdown by model, aggregates the call rows instead (indexed by run and day).
The tables and forecasts are portable SQL (``store.sql``): ``harness ledger`` reads them on
the light path without SQLAlchemy (``store.light``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from .. import clock
from ..store.sql import Conn, fetch
from ..store.status import WORKSPACE
from ..store.views import histogram
from ..usage import Budget
from .days import day_of, next_day_start

if TYPE_CHECKING:
    from sqlalchemy import Connection

FIELDS = (
    "day",
    "agent",
    "calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "estimated_calls",
    "unsettled_calls",
    "error_calls",
    "budget_tokens",
    "budget_cost_usd",
    "used_pct",
)  # the documented --json / --csv columns (``model`` is added with --by model)


def _finish(row: dict[str, Any], budgets: Mapping[str, Budget]) -> dict[str, Any]:
    for key in (
        "calls",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "estimated_calls",
        "unsettled_calls",
        "error_calls",
    ):
        row[key] = int(row.get(key) or 0)
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["cost_usd"] = round(float(row.get("cost_usd") or 0.0), 6)
    budget = budgets.get(row["agent"], Budget())
    row["budget_tokens"] = budget.tokens
    row["budget_cost_usd"] = budget.cost_usd
    row["used_pct"] = (
        round(100.0 * row["total_tokens"] / budget.tokens, 1) if budget.tokens else None
    )
    keys = FIELDS[:2] + (("model",) if "model" in row else ()) + FIELDS[2:]
    return {k: row[k] for k in keys}


def rows(
    conn: Conn,
    budgets: Mapping[str, Budget],
    *,
    since: str | None = None,
    until: str | None = None,
    agent: str | None = None,
    run_id: int | None = None,
    by_model: bool = False,
) -> list[dict[str, Any]]:
    """Ledger rows ordered by day, agent (and model). Days are inclusive ISO dates."""
    given = {"since": since, "until": until, "agent": agent, "run_id": run_id}
    params = {k: v for k, v in given.items() if v is not None}
    tests = {"since": "day >= :since", "until": "day <= :until", "agent": "agent = :agent"}
    where = " AND ".join(["1 = 1"] + [tests[k] for k in params if k in tests])
    if run_id is None and not by_model:
        sql = (
            f"SELECT * FROM usage_daily WHERE agent != :everyone AND calls > 0 AND {where}"
            " ORDER BY day, agent"
        )
        return [_finish(r, budgets) for r in fetch(conn, sql, {**params, "everyone": WORKSPACE})]
    keys = "day, agent" + (", model" if by_model else "")
    if run_id is not None:
        where += " AND run_id = :run_id"
    sql = (
        f"SELECT {keys}, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt_tokens,"
        " SUM(cached_tokens) AS cached_tokens, SUM(completion_tokens) AS completion_tokens,"
        " SUM(reasoning_tokens) AS reasoning_tokens, SUM(cost_usd) AS cost_usd,"
        " SUM(CASE WHEN estimated THEN 1 ELSE 0 END) AS estimated_calls,"
        " SUM(CASE WHEN outcome = 'unsettled' THEN 1 ELSE 0 END) AS unsettled_calls,"
        " SUM(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END) AS error_calls"
        f" FROM calls WHERE {where} GROUP BY {keys} ORDER BY {keys}"
    )
    return [_finish(r, budgets) for r in fetch(conn, sql, params)]


def forecast(
    conn: Conn, budgets: Mapping[str, Budget], tz: ZoneInfo, now: float | None = None
) -> list[dict[str, Any]]:
    """For each agent with a token budget: today's use, pace (tokens/hour since the day's first
    call) and when, at that pace, it will hit its budget (null when not today)."""
    now = clock.now() if now is None else now
    day = day_of(now, tz)
    today = datetime.fromtimestamp(now, tz).date()
    start = datetime(today.year, today.month, today.day, tzinfo=tz).timestamp()
    end = next_day_start(now, tz)
    out = []
    firsts = {
        r["agent"]: r["first"]
        for r in fetch(
            conn,
            "SELECT agent, MIN(ts) AS first FROM calls WHERE day = :day GROUP BY agent",
            {"day": day},
        )
    }
    used = {
        r["agent"]: r["used"]
        for r in fetch(
            conn,
            "SELECT agent, prompt_tokens + completion_tokens AS used FROM usage_daily"
            " WHERE day = :day",
            {"day": day},
        )
    }
    for agent, budget in sorted(budgets.items()):
        if budget.tokens is None:
            continue
        spent = int(used.get(agent, 0))
        first = float(firsts.get(agent, now))
        hours = max((now - min(first, now)) / 3600, 1 / 60)
        pace = spent / hours if spent else 0.0
        left = max(budget.tokens - spent, 0)
        hit_at = now + left / pace * 3600 if pace else None
        out.append(
            {
                "agent": agent,
                "day": day,
                "used_tokens": spent,
                "budget_tokens": budget.tokens,
                "tokens_per_hour": round(pace, 1),
                "hits_budget_at": datetime.fromtimestamp(hit_at, tz).isoformat(timespec="minutes")
                if hit_at and hit_at < end
                else None,
                "exhausted": spent >= budget.tokens,
                "day_started": datetime.fromtimestamp(start, tz).isoformat(timespec="minutes"),
            }
        )
    return out


def call_latency(conn: Connection, bounds: Sequence[float]) -> list[dict[str, Any]]:
    """Per agent and model, a histogram of call latency in seconds (every attempt that reached
    a server and was answered; unsettled ones have no latency): ``{"agent", "model", "count",
    "sum", "buckets"}``, ``buckets`` cumulative over ``bounds`` (see ``views.histogram``)."""
    from ..store.schema import calls

    seconds = calls.c.latency_ms / 1000.0
    answered = calls.c.outcome != "unsettled"
    return histogram(conn, seconds, [calls.c.agent, calls.c.model], bounds, answered)
