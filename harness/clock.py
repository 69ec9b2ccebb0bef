"""The one wall clock of the store, queue and ledger: replaceable in tests.

``now()`` is seconds since the epoch. ``use(fn)`` swaps the source (e.g. a fake clock that a
test moves past midnight); it applies process-wide. ``parse_time`` reads a time as users write
it (``12h``, ``7d``, ``yesterday``, an ISO date or time), the one parser of every ``--since``,
``--until`` and ``--day`` of the CLI and of the dashboard's filters; ``parse_period`` and
``period_days`` turn a pair into instants or ledger days, refusing a reversed range.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

_source: Callable[[], float] = time.time


def now() -> float:
    return _source()


def use(source: Callable[[], float] | None) -> None:
    """Use ``source`` as the clock (``None``: the real one again)."""
    global _source
    _source = source or time.time


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FORMS = "12h, 30m, 7d, 2w, now, today, yesterday, 2024-06-01 or 2024-06-01T08:00"
_SPAN = re.compile(r"(\d{1,6})\s*([smhdw])")


def day_of(ts: float, tz: ZoneInfo) -> str:
    """The ISO date of ``ts`` in ``tz``."""
    return datetime.fromtimestamp(ts, tz).date().isoformat()


def _midnight(day: date, tz: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def _named_day(word: str, now: float, tz: ZoneInfo) -> date | None:
    """``today``, ``yesterday`` or an ISO date as a date; None for anything else."""
    if word in ("today", "yesterday"):
        today = datetime.fromtimestamp(now, tz).date()
        return today - timedelta(days=1) if word == "yesterday" else today
    try:
        return date.fromisoformat(word)
    except ValueError:
        return None


def parse_time(text: str, now: float, tz: ZoneInfo, *, end: bool = False) -> float:
    """The instant a user means by ``text``: the one parser of every ``--since``, ``--until``
    and ``--day``. A span before ``now`` (``12h``, ``30m``, ``7d``, ``2w``, ``45s``), ``now``;
    ``today``, ``yesterday`` or an ISO date: its first instant (with ``end``, its last); an
    ISO date/time, in ``tz`` when it has no offset. ValueError naming the value and the
    forms it may take."""
    word = text.strip().lower()
    m = _SPAN.fullmatch(word)
    if m:
        return now - int(m.group(1)) * UNITS[m.group(2)]
    if word == "now":
        return now
    day = _named_day(word, now, tz)
    if day is not None:
        return _midnight(day + timedelta(days=1), tz) - 1e-6 if end else _midnight(day, tz)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (give {FORMS})") from None
    return (when if when.tzinfo else when.replace(tzinfo=tz)).timestamp()


def parse_period(
    since: str | None, until: str | None, now: float, tz: ZoneInfo
) -> tuple[float | None, float | None]:
    """``(start, end)`` instants of ``--since``/``--until`` (either may be absent; a date as
    ``until`` includes that whole day). ValueError for a start in the future or a range
    whose start is after its end, naming both."""
    start = parse_time(since, now, tz) if since else None
    stop = parse_time(until, now, tz, end=True) if until else None
    if start is not None and start > now:
        raise ValueError(f"--since {since!r} is in the future")
    if start is not None and stop is not None and start > stop:
        raise ValueError(f"--since {since!r} is after --until {until!r}")
    return start, stop


def period_days(
    day: str | None, since: str | None, until: str | None, now: float, tz: ZoneInfo
) -> tuple[str | None, str | None]:
    """The first and last ledger days (ISO dates in ``tz``, inclusive) of ``--day`` or
    ``--since``/``--until``, read by :func:`parse_time`: ``--day yesterday`` is that one day;
    ``--since 7d`` the last seven days, today included; ``--since 12h`` from the day 12 hours
    ago. ValueError for both ``--day`` and a range, or a reversed range."""
    if day:
        if since or until:
            raise ValueError("give --day or --since/--until, not both")
        one = day_of(parse_time(day, now, tz), tz)
        return one, one
    m = _SPAN.fullmatch((since or "").strip().lower())
    if m and m.group(2) == "d" and int(m.group(1)) >= 1:  # N days, counting today
        since = f"{int(m.group(1)) - 1}d"
    start, stop = parse_period(since, until, now, tz)
    return (
        day_of(start, tz) if start is not None else None,
        day_of(stop, tz) if stop is not None else None,
    )
