"""The durable store: tasks, transcripts, the ledger's tables, notes, schedules, workers.

:class:`Store` runs transaction functions off the event loop (``access``). Everything else
here is a plain function of an open SQLAlchemy ``Connection``, so several compose into one
transaction: ``queue`` (task transitions, each a guarded UPDATE), ``transcripts``, ``notes``,
``workers`` (epochs and heartbeats), ``views`` (the read models the CLI, the report and the
dashboard show; portable SQL, so they also run on the read-only commands' light path,
``light``, without SQLAlchemy). ``schema`` holds every table, ``engine`` the per-dialect
engine and the migrations (``migrations/``).

Names are imported on first use: ``harness status`` reads through ``light`` and ``views``
and never pays for SQLAlchemy.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING, Any

from .status import TERMINAL, TaskStatus

if TYPE_CHECKING:
    from .access import Store as Store
    from .access import TxFn as TxFn

__all__ = ["TERMINAL", "Store", "TaskStatus", "TxFn"]


def __getattr__(name: str) -> Any:
    if name in ("Store", "TxFn"):
        return getattr(_import_module(".access", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
