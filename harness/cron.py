"""Cron maths: the instants at which a cron expression fires in a time zone (pure functions).

An *instant* is a moment at which the wall clock of ``tz`` matches the expression. Around DST
changes:

- a wall time skipped when clocks go forward fires once, at the first instant after the gap;
- a wall time repeated when clocks go back fires once, at its first occurrence, unless the
  hour field is ``*`` (then every real occurrence fires, as an hourly job should).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

__all__ = ["CRON_ERRORS", "instants", "latest_instant", "next_instant", "problem"]

#: What a bad expression (or one that never matches) raises while instants are computed
#: (croniter's own CroniterError is a ValueError: croniter is imported only to compute).
CRON_ERRORS = (ValueError, KeyError, TypeError)


def instants(expr: str, tz: ZoneInfo, start: float, *, backwards: bool) -> Iterator[float]:
    """Instants strictly after (or strictly before) ``start``, nearest first.

    croniter yields both occurrences of a repeated wall time; the second one (``fold=1``) is
    dropped unless the hour field is a wildcard.
    """
    from croniter import croniter

    it = croniter(expr, datetime.fromtimestamp(start, tz))
    every_hour = it.expanded[1] == ["*"]
    step = it.get_prev if backwards else it.get_next
    while True:
        ts = float(step(float))
        if every_hour or datetime.fromtimestamp(ts, tz).fold == 0:
            yield ts


def next_instant(expr: str, tz: ZoneInfo, after: float) -> float:
    """The first instant strictly after ``after`` (epoch seconds)."""
    return next(instants(expr, tz, after, backwards=False))


def latest_instant(expr: str, tz: ZoneInfo, at: float) -> float:
    """The latest instant at or before ``at``. Instants fall on whole seconds, so "strictly
    before the next whole second" is "at or before ``at``"."""
    return next(instants(expr, tz, math.floor(at) + 1.0, backwards=True))


def problem(expr: str, tz: ZoneInfo) -> str | None:
    """Why ``expr`` cannot be used (a bad field, or it never matches, like ``0 0 31 2 *``),
    or None."""
    try:
        next_instant(expr, tz, 0.0)
    except CRON_ERRORS as exc:
        return f"bad cron expression {expr!r}: {exc}"
    return None
