"""The one wall clock of the store, queue and ledger: replaceable in tests.

``now()`` is seconds since the epoch. ``use(fn)`` swaps the source (e.g. a fake clock that a
test moves past midnight); it applies process-wide. ``parse_since`` reads the start of a
period as users write it (``12h``, ``2d``, an ISO time), for the CLI and the dashboard alike.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

_source: Callable[[], float] = time.time


def now() -> float:
    return _source()


def use(source: Callable[[], float] | None) -> None:
    """Use ``source`` as the clock (``None``: the real one again)."""
    global _source
    _source = source or time.time


UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float, tz: ZoneInfo) -> float:
    """``12h``, ``2d``, ``30m``, ``1w`` before ``now``, or an ISO date/time (in ``tz`` when it
    has no offset). Raises ValueError with a readable message."""
    m = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if m:
        return now - int(m.group(1)) * UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration (12h, 2d) or ISO date/time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    start = when.timestamp()
    if start > now:
        raise ValueError(f"{text!r} is in the future")
    return start
