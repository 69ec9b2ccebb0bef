"""The token ledger: what every model call cost, per agent and day, and the budgets that hold.

``budgets``: the worst case of a call reserved before it is sent. ``writes``: call rows and
roll-ups after it, unsettled calls (functions of an open write transaction). ``reads``: the
ledger tables and forecasts that the CLI, the report and the dashboard show. ``days``: the
calendar (days in the workspace's time zone).
"""

from .budgets import reserve, today_use
from .days import day_after_start, day_of, days_back, next_day_start
from .reads import forecast, rows
from .writes import CallContext, prune, record, release, settle_orphans, settle_unsettled

__all__ = [
    "CallContext",
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
    "settle_orphans",
    "settle_unsettled",
    "today_use",
]
