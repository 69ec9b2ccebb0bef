"""Cron schedules: ``[[schedules]]`` in ``config/harness.toml`` start runs at their instants.

An *instant* is a moment at which the schedule's wall clock (its ``timezone``, default the
workspace's) matches the cron expression. Around DST changes:

- a wall time skipped when clocks go forward fires once, at the first instant after the gap;
- a wall time repeated when clocks go back fires once, at its first occurrence, unless the
  hour field is ``*`` (then every real occurrence fires, as an hourly job should).

Every worker calls :func:`fire_due` during maintenance. The ``schedules`` table holds, per name,
the last instant handled; an instant is claimed with a guarded UPDATE (``last_fire_at < instant``)
and its run is created in the same transaction, so with any number of workers, processes or
machines (SQLite or PostgreSQL) a given instant fires exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from croniter import CroniterError, croniter
from sqlalchemy import Connection, and_, or_, select, update

from . import queue
from .db import insert_ignore
from .errors import Problem
from .ledger import Budget
from .schema import TERMINAL, runs, schedules, tasks
from .settings import CONFIG_FILE, ScheduleConfig, Settings

log = structlog.get_logger("harness.schedules")

__all__ = ["describe", "fire_due", "latest_fire", "next_fire", "validate_schedules"]


def zone(schedule: ScheduleConfig, settings: Settings) -> ZoneInfo:
    """The schedule's time zone (its own, else the workspace's)."""
    return ZoneInfo(schedule.timezone or settings.timezone)


def _instants(expr: str, tz: ZoneInfo, start: float, *, backwards: bool) -> Iterator[float]:
    """Instants strictly after (or strictly before) ``start``, nearest first.

    croniter yields both occurrences of a repeated wall time; the second one (``fold=1``) is
    dropped unless the hour field is a wildcard.
    """
    it = croniter(expr, datetime.fromtimestamp(start, tz))
    every_hour = it.expanded[1] == ["*"]
    step = it.get_prev if backwards else it.get_next
    while True:
        ts = float(step(float))
        if every_hour or datetime.fromtimestamp(ts, tz).fold == 0:
            yield ts


def next_fire(schedule: ScheduleConfig, settings: Settings, after: float) -> float:
    """The first instant strictly after ``after`` (epoch seconds)."""
    return next(_instants(schedule.cron, zone(schedule, settings), after, backwards=False))


def latest_fire(schedule: ScheduleConfig, settings: Settings, at: float) -> float:
    """The latest instant at or before ``at``. Instants fall on whole seconds, so "strictly
    before the next whole second" is "at or before ``at``"."""
    start = math.floor(at) + 1.0
    return next(_instants(schedule.cron, zone(schedule, settings), start, backwards=True))


# -- validation ----------------------------------------------------------------------------


def validate_schedules(settings: Settings, file: str = CONFIG_FILE) -> list[Problem]:
    """Every problem with ``[[schedules]]``: bad cron expressions (including ones that never
    match, like ``0 0 31 2 *``), unknown time zones, duplicate or empty names, empty goals.
    Fields are named ``schedules[i].cron`` and so on."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(settings.schedules):
        where = f"schedules[{i}]"
        if not s.name.strip():
            problems.append(Problem(file, "needs a non-empty name", f"{where}.name"))
        elif s.name in seen:
            msg = f"duplicate schedule name {s.name!r} (also schedules[{seen[s.name]}])"
            problems.append(Problem(file, msg, f"{where}.name"))
        seen.setdefault(s.name, i)
        if not s.goal.strip() and not s.report:
            problems.append(Problem(file, "needs a non-empty goal", f"{where}.goal"))
        problems.extend(_check_time(s, settings, file, where))
    return problems


def _check_time(s: ScheduleConfig, settings: Settings, file: str, where: str) -> list[Problem]:
    problems = []
    tz = ZoneInfo("UTC")
    try:
        tz = zone(s, settings)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(file, f"unknown time zone {s.timezone!r}", f"{where}.timezone"))
    try:
        next(_instants(s.cron, tz, 0.0, backwards=False))
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        problems.append(Problem(file, f"bad cron expression {s.cron!r}: {exc}", f"{where}.cron"))
    return problems


# -- firing --------------------------------------------------------------------------------


def fire_due(
    conn: Connection,
    settings: Settings,
    now: float,
    *,
    root: Path | None = None,
    budgets: Mapping[str, Budget] | None = None,
) -> list[int]:
    """Start the runs that are due at ``now``; returns the new run ids. Runs in the caller's
    write transaction (the run and the claimed instant commit together).

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
    if not settings.schedules:
        return []
    known = dict(
        conn.execute(
            select(schedules.c.name, schedules.c.last_fire_at).where(
                schedules.c.name.in_([s.name for s in settings.schedules])
            )
        ).all()
    )
    fired: list[int] = []
    for s in sorted(settings.schedules, key=lambda s: s.name):
        if s.name not in known:
            _first_seen(conn, s, now)
            continue
        try:
            instant = latest_fire(s, settings, now)
        except (CroniterError, ValueError, KeyError, ZoneInfoNotFoundError) as exc:
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
    from .report import build_report  # report reads views; keep start-up light

    local = datetime.fromtimestamp(instant, zone(s, settings))
    path = (root or Path.cwd()) / local.strftime(s.report or "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(build_report(conn, settings, since, instant, budgets), encoding="utf-8")
    except OSError as exc:  # the instant is consumed; the rest of maintenance goes on
        log.error("schedule_report_failed", schedule=s.name, path=str(path), error=str(exc))
        return
    log.info("schedule_report_written", schedule=s.name, path=str(path))


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
    ``now`` that would fire (null when the expression is invalid).
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
    try:
        tz: ZoneInfo | None = zone(s, settings)
        after = max(now, row.last_fire_at) if row is not None and row.last_fire_at else now
        nxt: float | None = next_fire(s, settings, after)
    except (CroniterError, ValueError, KeyError, ZoneInfoNotFoundError):
        tz, nxt = None, None

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
    }
