"""The token ledger's writes: one row per model call attempt, daily and per-run roll-ups,
reservations settled or charged as *unsettled*.

Writes happen inside the caller's transaction so that a call row, its roll-ups and the
transcript message it produced commit together (invariant 1). Reserving is
:mod:`.budgets`'s (invariant 2).

Lock order. On PostgreSQL two transactions that lock the same rows in different orders can
deadlock, and the victim is rolled back (a live step's answer with it). Every transaction that
writes the ledger therefore takes its rows in one global order: task rows first (the queue's:
the lease checked, the task moved, its messages written), then reservations (by id), call
rows, the runs' roll-ups (by run id) and last the days' roll-ups (by day, each day's agents
before the workspace row ``*``, which is also the order :mod:`.budgets` reserves in).

The day rows come last because every call of an agent, and every call of the workspace,
updates them: a transaction holds their locks from its UPDATE to its COMMIT, so they are
updated just before it commits, and other calls wait for them as briefly as can be. Roll-up
changes are gathered in :class:`RollUps` and written at the end, in that order, by the
function that made them or, when it is handed one (``roll_ups=``), by its caller once the
transaction's other writes are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from .. import clock
from ..settings import Settings
from ..store.access import RETRYING
from ..store.engine import Batch, batch, insert_or_add, is_postgres, run
from ..store.schema import USAGE_COUNTERS, WORKSPACE, calls, reservations, runs, usage_daily
from ..usage import CallOutcome, CallRecord, Usage
from .days import day_of


@dataclass(frozen=True)
class CallContext:
    """Who made a call: attached to every ledger row."""

    agent: str
    run_id: int | None = None
    task_id: int | None = None
    worker_id: int | None = None


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
_DAY_DELTAS = tuple((name, f"d_{name}") for name in _DAY_COUNTERS)
_NO_CHANGE = {delta: 0 for _, delta in _DAY_DELTAS}
_RUN_COUNTERS = (*USAGE_COUNTERS, "cost_usd")
_ROLL_UP_RUN = (
    update(runs).where(runs.c.id == bindparam("p_run")).values(_add_to(runs, _RUN_COUNTERS))
)
_NO_RUN_CHANGE = {f"d_{name}": 0 for name in _RUN_COUNTERS}


class RollUps:
    """Changes to roll-up rows, summed per row and written with one statement per row, in
    the global lock order: runs by id (an UPDATE), then days by (day, agents before the
    workspace, agent): an UPSERT, which makes the row when it is the day's first write (a
    call recorded that no reservation of that day preceded) and locks it as an UPDATE does."""

    def __init__(self) -> None:
        self._days: dict[tuple[str, str], dict[str, Any]] = {}
        self._runs: dict[int, dict[str, Any]] = {}

    def add(self, day: str, agents: Sequence[str], deltas: dict[str, Any]) -> None:
        for agent in agents:
            _sum_into(self._days.setdefault((day, agent), dict(_NO_CHANGE)), deltas)

    def add_run(self, run_id: int, deltas: dict[str, Any]) -> None:
        _sum_into(self._runs.setdefault(run_id, dict(_NO_RUN_CHANGE)), deltas)

    def write(self, conn: Connection) -> None:
        """The statements, sent together (one round trip on PostgreSQL)."""
        if self._days or self._runs:
            with batch(conn) as sent:
                self.send(sent)

    def send(self, sent: Batch) -> None:
        """Send the statements with ``sent``'s other statements (after them)."""
        for run_id in sorted(self._runs):
            sent.run(_ROLL_UP_RUN, {"p_run": run_id, **self._runs[run_id]})
        if self._days:
            add_to_day = insert_or_add(sent, usage_daily, _DAY_COUNTERS)
        for day, agent in sorted(self._days, key=lambda k: (k[0], k[1] == WORKSPACE, k[1])):
            deltas = self._days[(day, agent)]
            row = {"day": day, "agent": agent} | {n: deltas[d] for n, d in _DAY_DELTAS}
            sent.run(add_to_day, row)
        self._days, self._runs = {}, {}  # written: a second write adds nothing


def _sum_into(row: dict[str, Any], deltas: dict[str, Any]) -> None:
    for key, value in deltas.items():
        row[key] += value


def _give_back(changes: RollUps, day: str, agent: str, tokens: int, cost: float) -> None:
    deltas = {"d_reserved_tokens": -tokens, "d_reserved_cost": -cost}
    changes.add(day, (agent, WORKSPACE), deltas)


def _release(conn: Connection, reservation_id: int, changes: RollUps) -> bool:
    return _given_back(run(conn, _RELEASE, {"p_id": reservation_id}).fetchone(), changes)


def _given_back(row: Any, changes: RollUps) -> bool:
    """A released reservation's row (None: it was gone) given back to its day's roll-ups."""
    if row is None:
        return False
    day, agent, tokens, cost = row
    _give_back(changes, day, agent, tokens, cost)
    return True


def release(conn: Connection, reservation_id: int) -> bool:
    """Drop a reservation (the call was never sent, or has been settled). False when it was
    gone already (settled as unsettled after its worker was declared dead)."""
    changes = RollUps()
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
    roll_ups: RollUps | None = None,
) -> list[int]:
    """Write one ledger row per call record, update the roll-ups (agent/day, workspace/day,
    run) and settle the reservation, all in the caller's transaction. Returns the row ids.
    With ``roll_ups`` the roll-up changes are added to it, for the caller to write last
    (see the lock order above); else they are written here.

    The rows carry the reservation they settle. A write retried after a commit whose outcome
    was unknown (``RETRYING``) finds its reservation gone and the rows it wrote: it writes
    nothing again and returns their ids."""
    held = sorted([*([] if reservation_id is None else [reservation_id]), *extra_reservations])
    if not held and not records:
        return []  # nothing to write (a first attempt: no failed ones before it)
    changes = RollUps() if roll_ups is None else roll_ups
    ts = clock.now() if ts is None else ts
    if RETRYING.get():  # an earlier try may have committed: look before writing
        for rid in held:  # the global lock order
            if _release(conn, rid, changes):
                continue
            if done := _settled_rows(conn, rid):
                return done
            _unrecord_unsettled(conn, rid, changes)
        day, key = day_of(ts, settings.tz), max(held, default=None)
        made = (_call_row(ctx, rec, settings, ts, day, changes, key) for rec in records)
        ids = [int(run(conn, _INSERT_CALL, row).fetchone()[0]) for row in made]
    else:
        with batch(conn) as sent:
            recorded = send_record(sent, ctx, records, settings, held, changes, ts=ts)
        ids = recorded.finish(conn)
    if roll_ups is None:
        changes.write(conn)
    return ids


def send_record(
    sent: Batch,
    ctx: CallContext,
    records: Sequence[CallRecord],
    settings: Settings,
    held: Sequence[int],
    changes: RollUps,
    *,
    ts: float | None = None,
) -> Recorded:
    """:func:`record`'s writes for a first try (not ``RETRYING``), sent with a batch's other
    statements: the releases of ``held`` (in the global lock order) and the call rows, the
    roll-up changes added to ``changes`` for the caller to write last. Call
    :meth:`Recorded.finish` once the batch has ended."""
    ts = clock.now() if ts is None else ts
    day = day_of(ts, settings.tz)
    key = max(held, default=None)
    released = [(rid, sent.run(_RELEASE, {"p_id": rid})) for rid in sorted(held)]
    rows = [
        sent.run(_INSERT_CALL, _call_row(ctx, rec, settings, ts, day, changes, key))
        for rec in records
    ]
    return Recorded(released, rows, changes)


@dataclass
class Recorded:
    """The ledger rows of :func:`send_record`, sent with a batch."""

    released: list[tuple[int, Any]]  # reservation id, cursor
    rows: list[Any]  # cursors of the call rows' INSERTs
    changes: RollUps

    def finish(self, conn: Connection) -> list[int]:
        """The call rows' ids. A reservation that was gone is one whose worker was declared
        dead and the call charged as unsettled: that row is taken back now that the real
        answer is here."""
        for rid, cursor in self.released:
            if not _given_back(cursor.fetchone(), self.changes):
                _unrecord_unsettled(conn, rid, self.changes)
        return [int(cursor.fetchone()[0]) for cursor in self.rows]


_SETTLED_ROWS = (
    select(calls.c.id)
    .where(calls.c.reservation_id == bindparam("p_id"), calls.c.outcome != CallOutcome.UNSETTLED)
    .order_by(calls.c.id)
)


def _settled_rows(conn: Connection, reservation_id: int) -> list[int]:
    return [int(r[0]) for r in run(conn, _SETTLED_ROWS, {"p_id": reservation_id}).fetchall()]


def _unrecord_unsettled(conn: Connection, reservation_id: int, changes: RollUps) -> None:
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
        changes.add_run(row["run_id"], _usage_deltas(usage, -row["cost_usd"], sign=-1))


def _cost(settings: Settings, model: str, usage: Usage) -> float:
    cfg = settings.models.get(model)
    if cfg is None:
        return 0.0
    return cfg.cost(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)


def _call_row(
    ctx: CallContext,
    rec: CallRecord,
    settings: Settings,
    ts: float,
    day: str,
    changes: RollUps,
    reservation_id: int | None = None,
    cost: float | None = None,
) -> dict[str, Any]:
    """One call's row, its day's and run's roll-ups added to ``changes``."""
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
        "kind": rec.kind,
    }
    changes.add(day, (ctx.agent, WORKSPACE), _deltas(rec, cost))
    if ctx.run_id is not None:
        changes.add_run(ctx.run_id, _usage_deltas(u, cost, 1))
    return row


_INSERT_CALL = insert(calls).returning(calls.c.id)


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


def settle_orphans(conn: Connection, settings: Settings, worker_ids: Sequence[int]) -> int:
    """Record calls that were in flight when their worker died, as *unsettled* rows charged
    with their reserved estimate (so the ledger shows them instead of losing them)."""
    if not worker_ids:
        return 0
    orphans = select(reservations.c.id).where(reservations.c.worker_id.in_(list(worker_ids)))
    if is_postgres(conn):
        orphans = orphans.order_by(reservations.c.id).with_for_update()
    ids = list(conn.execute(orphans).scalars())
    why = "in flight when its worker died"
    return settle_unsettled(conn, settings, ids, why)


def settle_unsettled(
    conn: Connection, settings: Settings, reservation_ids: Sequence[int], why: str
) -> int:
    """Turn reservations into *unsettled* ledger rows charged with their estimates: each call
    may have reached the server, but its answer was never recorded (the worker died, or the
    call was cancelled mid-flight). A late answer replaces it (see ``record``). Returns how
    many were settled (a reservation gone already is skipped)."""
    changes = RollUps()
    settled = 0
    for rid in sorted(reservation_ids):
        taken = delete(reservations).where(reservations.c.id == rid).returning(*reservations.c)
        row = conn.execute(taken).mappings().first()
        if row is None:
            continue
        _unsettled_row(conn, settings, row, why, changes)
        settled += 1
    changes.write(conn)
    return settled


def _unsettled_row(
    conn: Connection, settings: Settings, r: Any, why: str, changes: RollUps
) -> None:
    _give_back(changes, r["day"], r["agent"], r["tokens"], r["cost"])
    ctx = CallContext(agent=r["agent"], run_id=r["run_id"], task_id=r["task_id"])
    rec = CallRecord(
        provider=r["provider"],
        model=r["model"],
        outcome=CallOutcome.UNSETTLED,
        usage=Usage(prompt_tokens=r["tokens"], estimated=True),
        error=f"{why}; charged with the reserved estimate",
    )
    day = day_of(r["created_at"], settings.tz)
    # the reserved worst case, priced as reserved (its output share at the output price)
    row = _call_row(ctx, rec, settings, r["created_at"], day, changes, r["id"], cost=r["cost"])
    run(conn, _INSERT_CALL, row).fetchone()  # read: an unread RETURNING keeps sqlite3 busy


def prune(conn: Connection, before_day: str) -> int:
    """Delete call rows older than ``before_day``; the daily roll-ups stay."""
    return conn.execute(delete(calls).where(calls.c.day < before_day)).rowcount
