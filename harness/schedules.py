"""Cron schedules: ``[[schedules]]`` in ``config/harness.toml`` start runs at their instants.

Instants (and what happens around DST changes) are :mod:`harness.cron`'s; a schedule's clock
is its ``timezone``, default the workspace's. Validation lives with the settings.

Every worker calls :func:`fire_due` during maintenance. The ``schedules`` table holds, per name,
the last instant handled; an instant is claimed with a guarded UPDATE (``last_fire_at < instant``)
and its run is created in the same transaction, so with any number of workers, processes or
machines (SQLite or PostgreSQL) a given instant fires exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from sqlalchemy import Connection, and_, or_, select, update

from . import cron
from .report import build_report
from .settings import ScheduleConfig, Settings
from .store import queue
from .store.engine import insert_ignore
from .store.schema import TERMINAL, runs, schedules, tasks
from .usage import Budget

log = structlog.get_logger("harness.schedules")

OVERDUE_AFTER_S = 120.0  # an instant still unhandled this long after it passed is overdue

__all__ = ["describe", "fire_due", "latest_fire", "next_fire", "zone"]


def zone(schedule: ScheduleConfig, settings: Settings) -> ZoneInfo:
    """The schedule's time zone (its own, else the workspace's)."""
    return ZoneInfo(schedule.timezone or settings.timezone)


def next_fire(schedule: ScheduleConfig, settings: Settings, after: float) -> float:
    """The first instant of ``schedule`` strictly after ``after`` (epoch seconds)."""
    return cron.next_instant(schedule.cron, zone(schedule, settings), after)


def latest_fire(schedule: ScheduleConfig, settings: Settings, at: float) -> float:
    """The latest instant of ``schedule`` at or before ``at``."""
    return cron.latest_instant(schedule.cron, zone(schedule, settings), at)


# -- firing --------------------------------------------------------------------------------


def fire_due(
    conn: Connection,
    settings: Settings,
    now: float,
    *,
    root: Path | None = None,
    budgets: Mapping[str, Budget] | None = None,
    only: ScheduleConfig | None = None,
) -> list[int]:
    """Start the runs that are due at ``now``; returns the new run ids. Runs in the caller's
    write transaction (the run and the claimed instant commit together); ``only``: just this
    schedule (the worker fires each in its own transaction, so one cannot hold up another).

    For each schedule, the latest instant at or before ``now`` fires when it is newer than the
    schedule's ``last_fire_at``:

    - **catch-up**: after downtime, missed instants fire *at most once*: only the latest one
      is fired, the earlier ones are dropped;
    - **first seen**: a schedule without a row yet is recorded with ``last_fire_at = now`` and
      does not fire; it fires from its next instant on (never retroactively);
    - **overlap**: with ``"skip"`` no run starts while an earlier run of the schedule is
      unfinished (its root task is not terminal), but the instant is still consumed so it does
      not fire late; with ``"queue"`` the run starts anyway.

    A schedule with ``report`` writes the morning report covering the time since its
    previous fire to that file (under ``root``, the workspace) instead of starting a run.

    Schedules are handled in name order so concurrent workers lock rows in the same order.
    """
    chosen = settings.schedules if only is None else [only]
    if not chosen:
        return []
    known = dict(
        conn.execute(
            select(schedules.c.name, schedules.c.last_fire_at).where(
                schedules.c.name.in_([s.name for s in chosen])
            )
        ).all()
    )
    fired: list[int] = []
    for s in sorted(chosen, key=lambda s: s.name):
        if s.name not in known:
            _first_seen(conn, s, now)
            continue
        try:
            instant = latest_fire(s, settings, now)
        except (*cron.CRON_ERRORS, ZoneInfoNotFoundError) as exc:
            log.error("schedule_invalid", schedule=s.name, cron=s.cron, error=str(exc))
            continue
        last = known[s.name]
        if last is not None and instant <= last:
            continue
        if s.report:
            if _claim_instant(conn, s, instant):
                _write_report(conn, settings, s, last or instant - 86400, instant, root, budgets)
            continue
        run_id = _fire(conn, settings, s, instant)
        if run_id is not None:
            fired.append(run_id)
    return fired


def _first_seen(conn: Connection, s: ScheduleConfig, now: float) -> None:
    row = {"name": s.name, "last_fire_at": now, "last_run_id": None}
    if conn.execute(insert_ignore(conn, schedules).values(row)).rowcount == 1:
        log.info("schedule_registered", schedule=s.name, cron=s.cron, first_seen=now)


def _fire(conn: Connection, settings: Settings, s: ScheduleConfig, instant: float) -> int | None:
    """Claim ``instant`` for ``s`` (guarded UPDATE) and start its run; None when another
    worker claimed it first or the run was skipped for overlap."""
    if not _claim_instant(conn, s, instant):
        return None
    when = datetime.fromtimestamp(instant, zone(s, settings)).isoformat()
    if s.overlap == "skip":
        busy = _unfinished_run(conn, s.name)
        if busy is not None:
            log.info("schedule_skipped", schedule=s.name, instant=when, unfinished_run=busy)
            return None
    agent = s.agent or settings.chief
    run_id, _task_id = queue.create_run(
        conn, s.goal, agent, max_attempts=settings.worker.max_attempts, schedule=s.name
    )
    conn.execute(update(schedules).where(schedules.c.name == s.name).values(last_run_id=run_id))
    log.info("schedule_fired", schedule=s.name, instant=when, run_id=run_id, agent=agent)
    return run_id


def _claim_instant(conn: Connection, s: ScheduleConfig, instant: float) -> bool:
    """Consume ``instant`` for ``s`` with a guarded UPDATE: True for exactly one worker."""
    claim = update(schedules).where(
        schedules.c.name == s.name,
        or_(schedules.c.last_fire_at.is_(None), schedules.c.last_fire_at < instant),
    )
    return conn.execute(claim.values(last_fire_at=instant)).rowcount == 1


def _write_report(
    conn: Connection,
    settings: Settings,
    s: ScheduleConfig,
    since: float,
    instant: float,
    root: Path | None,
    budgets: Mapping[str, Budget] | None,
) -> None:
    local = datetime.fromtimestamp(instant, zone(s, settings))
    base = root or Path.cwd()
    path = base / local.strftime(s.report or "")
    if not s.report_outside_workspace and not _inside(path, base):
        why = "the report path leaves the workspace (set report_outside_workspace to allow it)"
        log.error("schedule_report_refused", schedule=s.name, path=str(path), error=why)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(build_report(conn, settings, since, instant, budgets), encoding="utf-8")
    except Exception as exc:  # the instant is consumed; the rest of maintenance goes on
        log.error("schedule_report_failed", schedule=s.name, path=str(path), error=repr(exc))
        return
    log.info("schedule_report_written", schedule=s.name, path=str(path))


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (links resolved, as far as they exist) lies inside ``root``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _unfinished_run(conn: Connection, name: str) -> int | None:
    """The oldest run of schedule ``name`` whose root task is not terminal, if any."""
    stmt = (
        select(runs.c.id)
        .join(tasks, tasks.c.id == runs.c.root_task_id)
        .where(and_(runs.c.schedule == name, tasks.c.status.not_in([s.value for s in TERMINAL])))
        .order_by(runs.c.id)
        .limit(1)
    )
    return conn.execute(stmt).scalar()


# -- reading -------------------------------------------------------------------------------


def describe(conn: Connection, settings: Settings, now: float) -> list[dict[str, Any]]:
    """One JSON-ready dict per configured schedule, in name order (``harness schedules list``).

    ``last_fire_at`` is the last instant handled (fired, or skipped for overlap), or the moment
    the schedule was first seen when it has not fired yet; ``last_run_id`` is its latest run.
    Times are ISO 8601 in the schedule's time zone; ``next_fire_at`` is the first instant after
    ``now`` that would fire (null when the expression is invalid). ``overdue`` is true when an
    instant passed more than ``OVERDUE_AFTER_S`` ago without being handled: no worker is
    running maintenance (each does every few seconds).
    """
    rows = {
        r.name: r
        for r in conn.execute(
            select(schedules, tasks.c.status)
            .outerjoin(runs, runs.c.id == schedules.c.last_run_id)
            .outerjoin(tasks, tasks.c.id == runs.c.root_task_id)
        )
    }
    out = []
    for s in sorted(settings.schedules, key=lambda s: s.name):
        row = rows.get(s.name)
        out.append(_describe_one(s, settings, now, row))
    return out


def _describe_one(s: ScheduleConfig, settings: Settings, now: float, row: Any) -> dict[str, Any]:
    tz_name = s.timezone or settings.timezone
    last = row.last_fire_at if row is not None else None
    try:
        tz: ZoneInfo | None = zone(s, settings)
        after = max(now, last) if last else now
        nxt: float | None = next_fire(s, settings, after)
        due = latest_fire(s, settings, now)
    except (*cron.CRON_ERRORS, ZoneInfoNotFoundError):
        tz, nxt, due = None, None, None

    def iso(ts: float | None) -> str | None:
        if ts is None or tz is None:
            return None
        return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")

    return {
        "name": s.name,
        "cron": s.cron,
        "timezone": tz_name,
        "agent": s.agent or settings.chief,
        "goal": s.goal,
        "overlap": s.overlap,
        "last_fire_at": iso(row.last_fire_at) if row is not None else None,
        "next_fire_at": iso(nxt),
        "last_run_id": row.last_run_id if row is not None else None,
        "last_run_status": row.status if row is not None else None,
        "overdue": due is not None and last is not None and last < due <= now - OVERDUE_AFTER_S,
    }
