"""Ledger days: ISO dates in the workspace's time zone, and the instants where they start."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["day_after_start", "day_of", "days_back", "next_day_start"]

_last_day: tuple[ZoneInfo, float, float, str] | None = None  # tz, start, end, day


def day_of(ts: float, tz: ZoneInfo) -> str:
    """The ledger day (ISO date in the workspace's time zone) of a timestamp. The last day
    seen is kept with its bounds: every call and reservation asks, nearly always for today."""
    global _last_day
    last = _last_day  # one tuple: threads see a consistent set
    if last is not None and last[0] is tz and last[1] <= ts < last[2]:
        return last[3]
    day = datetime.fromtimestamp(ts, tz).date()
    _last_day = (tz, _midnight(day, tz), _midnight(day + timedelta(days=1), tz), day.isoformat())
    return day.isoformat()


def next_day_start(ts: float, tz: ZoneInfo) -> float:
    """The first instant of the day after ``ts``'s day, in ``tz`` (DST-safe)."""
    return day_after_start(datetime.fromtimestamp(ts, tz).date().isoformat(), tz)


def day_after_start(day: str, tz: ZoneInfo) -> float:
    """The first instant of the day after ledger day ``day`` (ISO date), in ``tz``."""
    return _midnight(date.fromisoformat(day) + timedelta(days=1), tz)


def _midnight(day: date, tz: ZoneInfo) -> float:
    """The first instant of ``day`` in ``tz``."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def days_back(today: str, n: int) -> str:
    """The ISO date ``n`` days before ``today``."""
    return (date.fromisoformat(today) - timedelta(days=n)).isoformat()
