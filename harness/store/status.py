"""Task statuses, compaction kinds and the workspace's ledger key: plain values, importable
without SQLAlchemy (``schema`` and ``compactions`` re-export them)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["MASK", "SUMMARY", "TERMINAL", "WORKSPACE", "TaskStatus"]


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # a parent waiting for its children; holds no worker
    PAUSED = "paused"  # out of budget; queued again at the next day or when the budget grows
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})

# the kinds of compaction record (``store.compactions``)
MASK, SUMMARY = "mask", "summary"

# the usage_daily row that sums every agent (for the workspace budget)
WORKSPACE = "*"
