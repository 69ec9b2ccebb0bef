"""The token ledger: what every model call cost, per agent and day, and the budgets that hold.

``budgets``: the worst case of a call reserved before it is sent. ``writes``: call rows and
roll-ups after it, unsettled calls (functions of an open write transaction). ``reads``: the
ledger tables and forecasts that the CLI, the report and the dashboard show. ``days``: the
calendar (days in the workspace's time zone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .budgets import reserve, today_use
    from .days import day_after_start, day_of, days_back, next_day_start
    from .reads import forecast, rows
    from .writes import (
        CallContext,
        RollUps,
        prune,
        record,
        release,
        send_record,
        settle_orphans,
        settle_unsettled,
    )

# loaded on first use: ``reads`` and ``days`` run without SQLAlchemy (the read-only
# commands' light path), ``budgets`` and ``writes`` import it
_HOME = {
    **dict.fromkeys(("reserve", "today_use"), "budgets"),
    **dict.fromkeys(("day_after_start", "day_of", "days_back", "next_day_start"), "days"),
    **dict.fromkeys(("forecast", "rows"), "reads"),
    **dict.fromkeys(
        (
            "CallContext",
            "RollUps",
            "prune",
            "record",
            "release",
            "send_record",
            "settle_orphans",
            "settle_unsettled",
        ),
        "writes",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later uses are plain lookups
    return value


__all__ = [
    "CallContext",
    "RollUps",
    "day_after_start",
    "day_of",
    "days_back",
    "forecast",
    "next_day_start",
    "prune",
    "record",
    "release",
    "reserve",
    "rows",
    "send_record",
    "settle_orphans",
    "settle_unsettled",
    "today_use",
]
