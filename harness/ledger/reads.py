"""Reading the ledger: per day and agent (or model) tables, and budget forecasts.

The default table reads the daily roll-ups (one indexed row per agent and day). Asking for a
run, or for a breakdown by model, aggregates the call rows instead (indexed by run and day).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Integer, cast, func, select

from .. import clock
from ..store.schema import WORKSPACE, calls, usage_daily
from ..store.views import histogram
from ..usage import Budget
from .days import day_of, next_day_start

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
    conn: Connection,
    budgets: Mapping[str, Budget],
    *,
    since: str | None = None,
    until: str | None = None,
    agent: str | None = None,
    run_id: int | None = None,
    by_model: bool = False,
) -> list[dict[str, Any]]:
    """Ledger rows ordered by day, agent (and model). Days are inclusive ISO dates."""
    if run_id is None and not by_model:
        u = usage_daily.c
        q = select(usage_daily).where(u.agent != WORKSPACE)
        if since:
            q = q.where(u.day >= since)
        if until:
            q = q.where(u.day <= until)
        if agent:
            q = q.where(u.agent == agent)
        result = conn.execute(q.order_by(u.day, u.agent)).mappings()
        return [_finish(dict(r), budgets) for r in result if r["calls"]]
    c = calls.c
    keys = [c.day, c.agent, *([c.model] if by_model else [])]
    q = (
        select(
            *keys,
            func.count().label("calls"),
            func.sum(c.prompt_tokens).label("prompt_tokens"),
            func.sum(c.cached_tokens).label("cached_tokens"),
            func.sum(c.completion_tokens).label("completion_tokens"),
            func.sum(c.reasoning_tokens).label("reasoning_tokens"),
            func.sum(c.cost_usd).label("cost_usd"),
            func.sum(cast(c.estimated, Integer)).label("estimated_calls"),
            _outcomes("unsettled").label("unsettled_calls"),
            _outcomes("error").label("error_calls"),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
    if run_id is not None:
        q = q.where(c.run_id == run_id)
    if since:
        q = q.where(c.day >= since)
    if until:
        q = q.where(c.day <= until)
    if agent:
        q = q.where(c.agent == agent)
    return [_finish(dict(r), budgets) for r in conn.execute(q).mappings()]


def _outcomes(name: str) -> Any:
    """How many call rows of a group have outcome ``name``."""
    return func.sum(cast(calls.c.outcome == name, Integer))


def forecast(
    conn: Connection, budgets: Mapping[str, Budget], tz: ZoneInfo, now: float | None = None
) -> list[dict[str, Any]]:
    """For each agent with a token budget: today's use, pace (tokens/hour since the day's first
    call) and when, at that pace, it will hit its budget (null when not today)."""
    now = clock.now() if now is None else now
    day = day_of(now, tz)
    today = datetime.fromtimestamp(now, tz).date()
    start = datetime(today.year, today.month, today.day, tzinfo=tz).timestamp()
    end = next_day_start(now, tz)
    out = []
    firsts = dict(
        conn.execute(
            select(calls.c.agent, func.min(calls.c.ts))
            .where(calls.c.day == day)
            .group_by(calls.c.agent)
        ).all()
    )
    used = dict(
        conn.execute(
            select(
                usage_daily.c.agent, usage_daily.c.prompt_tokens + usage_daily.c.completion_tokens
            ).where(usage_daily.c.day == day)
        ).all()
    )
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
    seconds = calls.c.latency_ms / 1000.0
    answered = calls.c.outcome != "unsettled"
    return histogram(conn, seconds, [calls.c.agent, calls.c.model], bounds, answered)
