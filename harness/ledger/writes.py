"""The token ledger: one row per model call attempt, daily roll-ups, reservations, budgets.

Writes happen inside the caller's transaction so that a call row, its roll-ups and the
transcript message it produced commit together (invariant 1). Budgets are enforced by
reserving the worst case before a call with a guarded UPDATE on the day's roll-up row, so
concurrent calls can never take an agent past its budget (invariant 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, delete, insert, select, update

from .. import clock
from ..errors import BudgetExceeded
from ..settings import Settings
from ..store.engine import insert_ignore, run
from ..store.schema import USAGE_COUNTERS, WORKSPACE, calls, reservations, runs, usage_daily
from ..usage import Budget, CallOutcome, CallRecord, Usage
from .days import day_of


@dataclass(frozen=True)
class CallContext:
    """Who made a call: attached to every ledger row."""

    agent: str
    run_id: int | None = None
    task_id: int | None = None
    worker_id: int | None = None


def _ensure_rows(conn: Connection, day: str, agents: Sequence[str]) -> None:
    run(conn, insert_ignore(conn, usage_daily), [{"day": day, "agent": a} for a in agents])


_USED = select(
    usage_daily.c.prompt_tokens + usage_daily.c.completion_tokens,
    usage_daily.c.cost_usd,
    usage_daily.c.reserved_tokens,
    usage_daily.c.reserved_cost,
).where(usage_daily.c.day == bindparam("p_day"), usage_daily.c.agent == bindparam("p_agent"))


def _used(conn: Connection, day: str, agent: str) -> tuple[int, float, int, float]:
    """Tokens used, cost, tokens and cost reserved."""
    row = run(conn, _USED, {"p_day": day, "p_agent": agent}).fetchone()
    return (int(row[0]), float(row[1]), int(row[2]), float(row[3])) if row else (0, 0.0, 0, 0.0)


def _update_day_row(conn: Connection, stmt: Any, params: dict[str, Any]) -> bool:
    """Run an UPDATE of one (``p_day``, ``p_agent``) roll-up row; when it matched none, make
    sure the row exists (the day's first call) and run it again. True when a row changed."""
    if run(conn, stmt, params).rowcount == 1:
        return True
    _ensure_rows(conn, params["p_day"], [params["p_agent"]])
    return bool(run(conn, stmt, params).rowcount == 1)


@cache
def _take_statement(limit_tokens: bool, limit_cost: bool) -> Any:
    """The guarded reservation UPDATE, built once per kind of budget."""
    u = usage_daily.c
    n: Any = bindparam("n")
    c: Any = bindparam("c")
    cond = [u.day == bindparam("p_day"), u.agent == bindparam("p_agent")]
    if limit_tokens:
        used = u.prompt_tokens + u.completion_tokens + u.reserved_tokens
        cond.append(used + n <= bindparam("max_tokens"))
    if limit_cost:
        cond.append(u.cost_usd + u.reserved_cost + c <= bindparam("max_cost"))
    return (
        update(usage_daily)
        .where(and_(*cond))
        .values(reserved_tokens=u.reserved_tokens + n, reserved_cost=u.reserved_cost + c)
    )


def _take(
    conn: Connection, day: str, agent: str, budget: Budget, tokens: int, cost: float
) -> BudgetExceeded | None:
    """Add a reservation to one roll-up row if it stays within budget (guarded UPDATE)."""
    stmt = _take_statement(budget.tokens is not None, budget.cost_usd is not None)
    params = {
        "p_day": day,
        "p_agent": agent,
        "n": tokens,
        "c": cost,
        "max_tokens": budget.tokens,
        "max_cost": budget.cost_usd,
    }
    if _update_day_row(conn, stmt, params):
        return None
    used, used_cost, reserved, reserved_cost = _used(conn, day, agent)
    who = "workspace" if agent == WORKSPACE else agent
    if budget.tokens is not None and used + reserved + tokens > budget.tokens:
        return BudgetExceeded(
            who, "daily token budget", budget.tokens, used + reserved, tokens, day
        )
    limit = budget.cost_usd or 0.0
    return BudgetExceeded(
        who, "daily cost budget (USD)", limit, used_cost + reserved_cost, cost, day
    )


def reserve(
    conn: Connection,
    ctx: CallContext,
    *,
    model: str,
    provider: str,
    tokens: int,
    cost: float,
    budget: Budget,
    workspace_budget: Budget,
    day: str,
) -> int:
    """Reserve ``tokens``/``cost`` for one call. Returns the reservation id.

    Raises BudgetExceeded when the agent's or the workspace's daily budget cannot cover it;
    the caller must then roll back its transaction (``Store.write`` does), reserving nothing.
    """
    for who, limit in ((ctx.agent, budget), (WORKSPACE, workspace_budget)):
        refused = _take(conn, day, who, limit, tokens, cost)
        if refused is not None:
            raise refused  # the caller's transaction rolls back what was taken so far
    rid = run(
        conn,
        _INSERT_RESERVATION,
        {
            "day": day,
            "agent": ctx.agent,
            "run_id": ctx.run_id,
            "task_id": ctx.task_id,
            "worker_id": ctx.worker_id,
            "model": model,
            "provider": provider,
            "tokens": tokens,
            "cost": cost,
            "created_at": clock.now(),
        },
    ).fetchone()[0]
    return int(rid)


_INSERT_RESERVATION = insert(reservations).returning(reservations.c.id)
_RELEASE = (
    delete(reservations)
    .where(reservations.c.id == bindparam("p_id"))
    .returning(reservations.c.day, reservations.c.agent, reservations.c.tokens, reservations.c.cost)
)


def _add_to(table: Table, names: Sequence[str]) -> dict[str, Any]:
    """``SET name = name + :d_name`` for each of ``names``."""
    return {name: table.c[name] + bindparam(f"d_{name}") for name in names}


# every change to a day's roll-up row: calls added (or taken back), reservations given back
_DAY_COUNTERS = (
    *USAGE_COUNTERS,
    "cost_usd",
    "unsettled_calls",
    "error_calls",
    "reserved_tokens",
    "reserved_cost",
)
_ADJUST_DAY = (
    update(usage_daily)
    .where(usage_daily.c.day == bindparam("p_day"), usage_daily.c.agent == bindparam("p_agent"))
    .values(_add_to(usage_daily, _DAY_COUNTERS))
)
_NO_CHANGE = {f"d_{name}": 0 for name in _DAY_COUNTERS}


class _DayChanges:
    """Changes to days' roll-up rows, summed per (day, agent) and written with one UPDATE per
    row (a settled call gives back its reservation and adds its usage in one statement)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, day: str, agents: Sequence[str], deltas: dict[str, Any]) -> None:
        for agent in agents:
            row = self._rows.setdefault((day, agent), dict(_NO_CHANGE))
            for key, value in deltas.items():
                row[key] += value

    def write(self, conn: Connection) -> None:
        # the agents' rows before the workspace's: the order reserve() locks them in, so two
        # transactions never wait on each other's rows (no deadlock on PostgreSQL)
        for day, agent in sorted(self._rows, key=lambda k: (k[1] == WORKSPACE, k)):
            params = {**self._rows[(day, agent)], "p_day": day, "p_agent": agent}
            _update_day_row(conn, _ADJUST_DAY, params)


def _give_back(changes: _DayChanges, day: str, agent: str, tokens: int, cost: float) -> None:
    deltas = {"d_reserved_tokens": -tokens, "d_reserved_cost": -cost}
    changes.add(day, (agent, WORKSPACE), deltas)


def _release(conn: Connection, reservation_id: int, changes: _DayChanges) -> bool:
    row = run(conn, _RELEASE, {"p_id": reservation_id}).fetchone()
    if row is None:
        return False
    day, agent, tokens, cost = row
    _give_back(changes, day, agent, tokens, cost)
    return True


def release(conn: Connection, reservation_id: int) -> bool:
    """Drop a reservation (the call was never sent, or has been settled). False when it was
    gone already (settled as unsettled after its worker was declared dead)."""
    changes = _DayChanges()
    released = _release(conn, reservation_id, changes)
    changes.write(conn)
    return released


def record(
    conn: Connection,
    ctx: CallContext,
    records: Sequence[CallRecord],
    settings: Settings,
    *,
    reservation_id: int | None = None,
    ts: float | None = None,
    extra_reservations: Sequence[int] = (),
) -> list[int]:
    """Write one ledger row per call record, update the roll-ups (agent/day, workspace/day,
    run) and settle the reservation, all in the caller's transaction. Returns the row ids."""
    changes = _DayChanges()
    held = [] if reservation_id is None else [reservation_id]
    for rid in [*held, *extra_reservations]:
        if not _release(conn, rid, changes):
            _unrecord_unsettled(conn, rid, changes)
    ts = clock.now() if ts is None else ts
    day = day_of(ts, settings.tz)
    ids = [_record_one(conn, ctx, rec, settings, ts, day, changes) for rec in records]
    changes.write(conn)
    return ids


def _unrecord_unsettled(conn: Connection, reservation_id: int, changes: _DayChanges) -> None:
    """Remove the unsettled row that stood in for a call whose real answer has now arrived
    (its worker was only paused, not dead), so the call is charged once, with actual usage."""
    row = (
        conn.execute(
            delete(calls)
            .where(
                calls.c.reservation_id == reservation_id, calls.c.outcome == CallOutcome.UNSETTLED
            )
            .returning(*calls.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        return
    usage = Usage(-row["prompt_tokens"], 0, 0, 0, row["estimated"])
    rec = CallRecord(row["provider"], row["model"], CallOutcome.UNSETTLED, usage)
    changes.add(row["day"], (row["agent"], WORKSPACE), _deltas(rec, -row["cost_usd"], sign=-1))
    if row["run_id"] is not None:
        _roll_up_run(conn, row["run_id"], usage, -row["cost_usd"], sign=-1)


def _cost(settings: Settings, model: str, usage: Usage) -> float:
    cfg = settings.models.get(model)
    if cfg is None:
        return 0.0
    return cfg.cost(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)


def _record_one(
    conn: Connection,
    ctx: CallContext,
    rec: CallRecord,
    settings: Settings,
    ts: float,
    day: str,
    changes: _DayChanges,
    reservation_id: int | None = None,
    cost: float | None = None,
) -> int:
    """Insert one call row; its day's roll-ups go into ``changes``, the run's is written."""
    u = rec.usage
    if cost is None:
        cost = _cost(settings, rec.model, u)
    row = {
        "ts": ts,
        "day": day,
        "run_id": ctx.run_id,
        "task_id": ctx.task_id,
        "agent": ctx.agent,
        "provider": rec.provider,
        "model": rec.model,
        "prompt_tokens": u.prompt_tokens,
        "cached_tokens": u.cached_tokens,
        "completion_tokens": u.completion_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "cost_usd": cost,
        "latency_ms": rec.latency_ms,
        "ttft_ms": rec.ttft_ms,
        "attempt": rec.attempt,
        "http_status": rec.status,
        "estimated": u.estimated,
        "outcome": str(rec.outcome),
        "error": rec.error,
        "reservation_id": reservation_id,
    }
    row_id = run(conn, _INSERT_CALL, row).fetchone()[0]
    changes.add(day, (ctx.agent, WORKSPACE), _deltas(rec, cost))
    if ctx.run_id is not None:
        _roll_up_run(conn, ctx.run_id, u, cost)
    return int(row_id)


_INSERT_CALL = insert(calls).returning(calls.c.id)
_ROLL_UP_RUN = (
    update(runs)
    .where(runs.c.id == bindparam("p_run"))
    .values(_add_to(runs, (*USAGE_COUNTERS, "cost_usd")))
)


def _usage_deltas(u: Usage, cost: float, sign: int) -> dict[str, Any]:
    return {
        "d_calls": sign,
        "d_prompt_tokens": u.prompt_tokens,
        "d_cached_tokens": u.cached_tokens,
        "d_completion_tokens": u.completion_tokens,
        "d_reasoning_tokens": u.reasoning_tokens,
        "d_estimated_calls": sign * int(u.estimated),
        "d_cost_usd": cost,
    }


def _deltas(rec: CallRecord, cost: float, sign: int = 1) -> dict[str, Any]:
    """A call's changes to a day's roll-up (``sign=-1``: taking one back; its usage then
    carries negative tokens)."""
    return {
        **_usage_deltas(rec.usage, cost, sign),
        "d_unsettled_calls": sign * int(rec.outcome == CallOutcome.UNSETTLED),
        "d_error_calls": sign * int(rec.outcome == CallOutcome.ERROR),
    }


def _roll_up_run(conn: Connection, run_id: int, u: Usage, cost: float, sign: int = 1) -> None:
    run(conn, _ROLL_UP_RUN, {"p_run": run_id, **_usage_deltas(u, cost, sign)})


def settle_orphans(conn: Connection, settings: Settings, worker_ids: Sequence[int]) -> int:
    """Record calls that were in flight when their worker died, as *unsettled* rows charged
    with their reserved estimate (so the ledger shows them instead of losing them)."""
    if not worker_ids:
        return 0
    orphans = conn.execute(
        select(reservations.c.id).where(reservations.c.worker_id.in_(list(worker_ids)))
    ).scalars()
    why = "in flight when its worker died; charged with the reserved estimate"
    return sum(settle_unsettled(conn, settings, rid, why) for rid in list(orphans))


def settle_unsettled(conn: Connection, settings: Settings, reservation_id: int, why: str) -> bool:
    """Turn a reservation into an *unsettled* ledger row charged with its estimate: the call
    may have reached the server, but its answer was never recorded (the worker died, or the
    call was cancelled mid-flight). A late answer replaces it (see ``record``)."""
    r = (
        conn.execute(
            delete(reservations)
            .where(reservations.c.id == reservation_id)
            .returning(*reservations.c)
        )
        .mappings()
        .first()
    )
    if r is None:
        return False
    changes = _DayChanges()
    _give_back(changes, r["day"], r["agent"], r["tokens"], r["cost"])
    ctx = CallContext(agent=r["agent"], run_id=r["run_id"], task_id=r["task_id"])
    rec = CallRecord(
        provider=r["provider"],
        model=r["model"],
        outcome=CallOutcome.UNSETTLED,
        usage=Usage(prompt_tokens=r["tokens"], estimated=True),
        error=why,
    )
    day = day_of(r["created_at"], settings.tz)
    # the reserved worst case, priced as reserved (its output share at the output price)
    _record_one(conn, ctx, rec, settings, r["created_at"], day, changes, r["id"], cost=r["cost"])
    changes.write(conn)
    return True


def today_use(conn: Connection, agent: str, day: str) -> tuple[int, float]:
    """Tokens and cost an agent has used on ``day`` (one indexed lookup)."""
    used, cost, _, _ = _used(conn, day, agent)
    return used, cost


def prune(conn: Connection, before_day: str) -> int:
    """Delete call rows older than ``before_day``; the daily roll-ups stay."""
    return conn.execute(delete(calls).where(calls.c.day < before_day)).rowcount
