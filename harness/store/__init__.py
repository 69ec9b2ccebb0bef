"""The durable store: tasks, transcripts, the ledger's tables, notes, schedules, workers.

:class:`Store` runs transaction functions off the event loop (``access``). Everything else
here is a plain function of an open SQLAlchemy ``Connection``, so several compose into one
transaction: ``queue`` (task transitions, each a guarded UPDATE), ``transcripts``, ``notes``,
``workers`` (epochs and heartbeats), ``views`` (the read models the CLI, the report and the
dashboard show). ``schema`` holds every table, ``engine`` the per-dialect engine and the
migrations (``migrations/``).
"""

from .access import Store, TxFn
from .schema import TERMINAL, TaskStatus

__all__ = ["TERMINAL", "Store", "TaskStatus", "TxFn"]
