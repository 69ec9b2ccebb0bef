"""Budgets: the worst case of a call is reserved before it is sent (invariant 2).

A reservation adds the call's prompt estimate + ``max_tokens`` (and their cost) to the
``reserved`` counters of the agent's and the workspace's roll-up rows of the day, with a
guarded UPDATE each (``used + reserved + n <= budget``), so concurrent calls can never take a
budget past its limit. The rows are always taken in one order (the agent's, then the
workspace's), the order every ledger write uses. On PostgreSQL both go in one statement, the
workspace's row taken only when the agent's was, so a try never holds the workspace's lock
without the agent's; what a try took when the other row did not take is given back by a
compensating UPDATE of the row it holds (no savepoint: a write after one costs the server a
subtransaction), and the rows are taken again one by one in the same order.

Near the end of a budget the call gets the room that is left: when the whole worst case does
not fit but the prompt and at least ``min_tokens`` of output do, ``max_tokens`` is shrunk to
the room left (the call still cannot exceed the budget: the provider sends the shrunk value).
A refusal tells why (:class:`~harness.errors.BudgetExceeded`): the call alone is larger than
the whole budget, the room is held by calls in flight, or the day's budget is spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    select,
    update,
)

from .. import clock
from ..errors import BudgetExceeded
from ..settings import ModelConfig, Settings
from ..store.access import RETRYING
from ..store.engine import Batch, batch, insert_ignore, run
from ..store.schema import WORKSPACE, reservations, usage_daily
from ..usage import Budget
from .writes import CallContext

__all__ = ["reserve", "today_use"]

Rows = Sequence[tuple[str, Budget]]  # (agent or WORKSPACE, its budget), in locking order


def reserve(
    conn: Connection,
    ctx: CallContext,
    settings: Settings,
    *,
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    min_tokens: int,
    budget: Budget,
    workspace_budget: Budget,
    day: str,
    key: str | None = None,
) -> tuple[int, int]:
    """Reserve one call on ``day``; returns ``(reservation id, max_tokens granted)``.

    Raises BudgetExceeded when the budgets cannot cover the prompt and ``min_tokens``; the
    caller must then roll back its transaction (``Store.write`` does), reserving nothing (the
    reservation's row is written before the budgets are taken). The day rows' UPDATEs are
    its last statements: call it last in a transaction (see ``writes``).
    ``key`` (unique, the caller's) makes a retried write find the reservation an earlier
    try took, if that try committed.
    """
    if key is not None and RETRYING.get():
        taken = run(conn, _BY_KEY, {"p_key": key}).fetchone()
        if taken is not None:
            return int(taken[0]), int(taken[1]) - prompt_tokens
    cfg = settings.models[model]
    rows: Rows = ((ctx.agent, budget), (WORKSPACE, workspace_budget))
    # the reservation's row first (a new row: no one waits for it), the day rows last: they
    # are every call's, and stay locked until the transaction ends (see ``writes``)
    values = {
        "day": day,
        "agent": ctx.agent,
        "run_id": ctx.run_id,
        "task_id": ctx.task_id,
        "worker_id": ctx.worker_id,
        "model": model,
        "provider": cfg.provider,
        "tokens": prompt_tokens + max_tokens,
        "cost": cfg.cost(prompt_tokens, 0, max_tokens),
        "created_at": clock.now(),
        "key": key,
    }
    with batch(conn) as sent:  # the row and the day rows' first try go together
        inserted = sent.run(_INSERT_RESERVATION, values)
        tries = _try_all(sent, day, rows, prompt_tokens, max_tokens, cfg)
    rid = int(inserted.fetchone()[0])
    if tries.taken(conn):
        return rid, max_tokens
    granted = min(max_tokens, _room(conn, day, rows, prompt_tokens, cfg))
    if granted < min_tokens or not _take_all(conn, day, rows, prompt_tokens, granted, cfg):
        raise _refusal(conn, day, rows, prompt_tokens, min_tokens, cfg, ctx.agent)
    cost = cfg.cost(prompt_tokens, 0, granted)
    run(conn, _SHRINK, {"p_id": rid, "tokens": prompt_tokens + granted, "cost": cost})
    return rid, granted


_INSERT_RESERVATION = insert(reservations).returning(reservations.c.id)
_SHRINK = (
    update(reservations)
    .where(reservations.c.id == bindparam("p_id"))
    .values(tokens=bindparam("tokens"), cost=bindparam("cost"))
)
_BY_KEY = select(reservations.c.id, reservations.c.tokens).where(
    reservations.c.key == bindparam("p_key")
)


@cache
def _take_statement(limit_tokens: bool, limit_cost: bool, suffix: str = "") -> Any:
    """The guarded reservation UPDATE, built once per kind of budget (``suffix``: of the
    names of the parameters that are the row's own, for two in one statement)."""
    u = usage_daily.c
    n: Any = bindparam("n")
    c: Any = bindparam("c")
    cond = [u.day == bindparam("p_day"), u.agent == bindparam(f"p_agent{suffix}")]
    if limit_tokens:
        used = u.prompt_tokens + u.completion_tokens + u.reserved_tokens
        cond.append(used + n <= bindparam(f"max_tokens{suffix}"))
    if limit_cost:
        cond.append(u.cost_usd + u.reserved_cost + c <= bindparam(f"max_cost{suffix}"))
    return (
        update(usage_daily)
        .where(and_(*cond))
        .values(reserved_tokens=u.reserved_tokens + n, reserved_cost=u.reserved_cost + c)
    )


@cache
def _take_both_statement(agent: tuple[bool, bool], workspace: tuple[bool, bool]) -> Any:
    """Both rows' guarded UPDATEs in one PostgreSQL statement, the workspace's made to wait
    for the agent's (its condition reads what the agent's took, so PostgreSQL runs that one
    first) and to take nothing when the agent's took nothing; it reads how many rows each
    took."""
    one: Any = literal_column("1")
    took_agent = _take_statement(*agent, "_a").returning(one).cte("took_agent")
    took_workspace = (
        _take_statement(*workspace, "_w")
        .where(exists(select(one).select_from(took_agent)))
        .returning(one)
        .cte("took_workspace")
    )
    return select(
        select(func.count()).select_from(took_agent).scalar_subquery(),
        select(func.count()).select_from(took_workspace).scalar_subquery(),
    )


def _limits(budget: Budget) -> tuple[bool, bool]:
    """Which limits ``budget`` has (tokens, cost): the shape of its guarded UPDATE."""
    return budget.tokens is not None, budget.cost_usd is not None


def _take_params(
    day: str, who: str, budget: Budget, tokens: int, cost: float, suffix: str = ""
) -> dict[str, Any]:
    """The parameters of :func:`_take_statement` for one row (its own ones named with
    ``suffix``)."""
    return {
        "p_day": day,
        "n": tokens,
        "c": cost,
        f"p_agent{suffix}": who,
        f"max_tokens{suffix}": budget.tokens,
        f"max_cost{suffix}": budget.cost_usd,
    }


def _take_args(
    day: str, who: str, budget: Budget, tokens: int, cost: float
) -> tuple[Any, dict[str, Any]]:
    """The guarded UPDATE that adds a reservation to one roll-up row, and its parameters."""
    return _take_statement(*_limits(budget)), _take_params(day, who, budget, tokens, cost)


def _take_both_args(day: str, rows: Rows, tokens: int, cost: float) -> tuple[Any, dict[str, Any]]:
    """:func:`_take_both_statement` for the agent's and the workspace's rows, its parameters."""
    (agent, budget), (workspace, workspace_budget) = rows
    stmt = _take_both_statement(_limits(budget), _limits(workspace_budget))
    params = _take_params(day, agent, budget, tokens, cost, "_a")
    return stmt, params | _take_params(day, workspace, workspace_budget, tokens, cost, "_w")


def _take(conn: Connection, day: str, who: str, budget: Budget, tokens: int, cost: float) -> bool:
    """Add a reservation to one roll-up row if it stays within budget (creating the day's row
    when it is the day's first call). True when taken."""
    stmt, params = _take_args(day, who, budget, tokens, cost)
    if run(conn, stmt, params).rowcount == 1:
        return True
    run(conn, insert_ignore(conn, usage_daily), [{"day": day, "agent": who}])
    return bool(run(conn, stmt, params).rowcount == 1)


_GIVE_BACK = (
    update(usage_daily)
    .where(usage_daily.c.day == bindparam("p_day"), usage_daily.c.agent == bindparam("p_agent"))
    .values(
        reserved_tokens=usage_daily.c.reserved_tokens - bindparam("n"),
        reserved_cost=usage_daily.c.reserved_cost - bindparam("c"),
    )
)


@dataclass
class _Tries:
    """The guarded UPDATEs of a reservation's rows, sent with a batch (:func:`_try_all`)."""

    tried: list[Any]  # their cursors: one per row, or one for both (PostgreSQL)
    day: str
    rows: Rows
    tokens: int
    cost: float

    def took(self) -> list[str]:
        """The rows the try took (in the rows' order), once the batch has ended."""
        if len(self.tried) == 1:  # both in one statement: how many rows each took
            counts = self.tried[0].fetchone()
            return [who for (who, _), n in zip(self.rows, counts, strict=True) if n == 1]
        return [who for (who, _), c in zip(self.rows, self.tried, strict=True) if c.rowcount == 1]

    def taken(self, conn: Connection) -> bool:
        """True when every row took, once the batch has ended. When one did not (a budget's
        end, or the day's first call: no row yet), what took is given back (its lock held:
        no row is taken out of order) and the rows are taken again one by one, in order, each
        made if missing; a row that still refuses has what took before it given back."""
        took = self.took()
        if len(took) == len(self.rows):
            return True
        self._give_back(conn, took)
        took = []
        for who, budget in self.rows:
            if not _take(conn, self.day, who, budget, self.tokens, self.cost):
                self._give_back(conn, took)
                return False
            took.append(who)
        return True

    def _give_back(self, conn: Connection, took: Sequence[str]) -> None:
        for who in took:
            run(
                conn,
                _GIVE_BACK,
                {"p_day": self.day, "p_agent": who, "n": self.tokens, "c": self.cost},
            )


def _try_all(sent: Batch, day: str, rows: Rows, prompt: int, out: int, cfg: ModelConfig) -> _Tries:
    """Send the UPDATEs that take ``prompt + out`` on every row, in the rows' order: one
    statement on PostgreSQL (:func:`_take_both_statement`), one a row elsewhere (SQLite's
    writers take the whole database's lock, one at a time: no row order to keep)."""
    tokens, cost = prompt + out, cfg.cost(prompt, 0, out)
    if sent.postgres:
        tried = [sent.run(*_take_both_args(day, rows, tokens, cost))]
    else:
        tried = [sent.run(*_take_args(day, who, b, tokens, cost)) for who, b in rows]
    return _Tries(tried, day, rows, tokens, cost)


def _take_all(
    conn: Connection, day: str, rows: Rows, prompt: int, out: int, cfg: ModelConfig
) -> bool:
    """Take ``prompt + out`` on every row, or on none (what was taken is given back)."""
    with batch(conn) as sent:
        tries = _try_all(sent, day, rows, prompt, out, cfg)
    return tries.taken(conn)


_USED = select(
    usage_daily.c.prompt_tokens + usage_daily.c.completion_tokens,
    usage_daily.c.cost_usd,
    usage_daily.c.reserved_tokens,
    usage_daily.c.reserved_cost,
).where(usage_daily.c.day == bindparam("p_day"), usage_daily.c.agent == bindparam("p_agent"))


def _used(conn: Connection, day: str, who: str) -> tuple[int, float, int, float]:
    """Tokens used, cost, tokens and cost reserved."""
    row = run(conn, _USED, {"p_day": day, "p_agent": who}).fetchone()
    return (int(row[0]), float(row[1]), int(row[2]), float(row[3])) if row else (0, 0.0, 0, 0.0)


def _room(conn: Connection, day: str, rows: Rows, prompt: int, cfg: ModelConfig) -> int:
    """The most output tokens a call with ``prompt`` could reserve now (negative: none)."""
    room = math.inf
    per_token = cfg.cost(0, 0, 1)
    for who, budget in rows:
        used, cost, reserved, reserved_cost = _used(conn, day, who)
        if budget.tokens is not None:
            room = min(room, budget.tokens - used - reserved - prompt)
        if budget.cost_usd is not None:
            left = budget.cost_usd - cost - reserved_cost - cfg.cost(prompt, 0, 0)
            if per_token:
                room = min(room, math.floor(left / per_token))
            elif left < 0:  # output is free, but the prompt alone does not fit
                room = -1
    return -1 if room == -math.inf else int(min(room, 2**62))


def _refusal(
    conn: Connection,
    day: str,
    rows: Rows,
    prompt: int,
    min_tokens: int,
    cfg: ModelConfig,
    agent: str,
) -> BudgetExceeded:
    """Why a call of ``prompt`` and at least ``min_tokens`` of output cannot be reserved."""
    need, need_cost = prompt + min_tokens, cfg.cost(prompt, 0, min_tokens)
    for who, budget in rows:
        used, cost, reserved, reserved_cost = _used(conn, day, who)
        name = "workspace" if who == WORKSPACE else who
        if budget.tokens is not None and used + reserved + need > budget.tokens:
            limit_tokens = budget.tokens
            return BudgetExceeded(
                name, "daily token budget", limit_tokens, used, need, day, reserved
            )
        if budget.cost_usd is not None and cost + reserved_cost + need_cost > budget.cost_usd:
            limit = budget.cost_usd
            return BudgetExceeded(
                name, "daily cost budget (USD)", limit, cost, need_cost, day, reserved_cost
            )
    # room was freed between the refusal and this look (another call settled): try again soon
    return BudgetExceeded(agent, "daily budget", math.inf, 0, need, day, reserved=1)


def today_use(conn: Connection, agent: str, day: str) -> tuple[int, float]:
    """Tokens and cost an agent has used on ``day`` (one indexed lookup)."""
    used, cost, _, _ = _used(conn, day, agent)
    return used, cost
