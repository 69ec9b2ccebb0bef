"""Compactions: what of a task's transcript is sent to the model in a shorter form.

A ``mask`` record replaces the tool results among messages ``first_seq..last_seq`` by
one-line stubs pointing at artifacts (``summary`` holds ``{seq: artifact id}`` as JSON); a
``summary`` record replaces all those messages by one summary. The transcript keeps every
message; the records are written once (a resumed task uses them, never compacts again what
was compacted) and a summary with the ledger row of the call that wrote it. Functions of a
connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select

from .. import clock
from .engine import insert_ignore, run
from .schema import compactions
from .status import MASK, SUMMARY

__all__ = ["MASK", "SUMMARY", "Compaction", "add_compaction", "load_compactions"]


@dataclass(frozen=True)
class Compaction:
    kind: str  # MASK or SUMMARY
    first_seq: int
    last_seq: int
    summary: str = ""
    call_id: int | None = None


_LOAD = (
    select(
        compactions.c.kind,
        compactions.c.first_seq,
        compactions.c.last_seq,
        compactions.c.summary,
        compactions.c.call_id,
    )
    .where(compactions.c.task_id == bindparam("p_task"))
    .order_by(compactions.c.id)
)


def load_compactions(conn: Connection, task_id: int) -> list[Compaction]:
    """A task's compactions, oldest first."""
    return [Compaction(*row) for row in run(conn, _LOAD, {"p_task": task_id}).fetchall()]


def add_compaction(conn: Connection, task_id: int, record: Compaction) -> None:
    """Record ``record`` once: the same (kind, last message) again is a write retried after
    an unknown commit, and ignored."""
    values = {
        "task_id": task_id,
        "kind": record.kind,
        "first_seq": record.first_seq,
        "last_seq": record.last_seq,
        "summary": record.summary,
        "call_id": record.call_id,
        "created_at": clock.now(),
    }
    run(conn, insert_ignore(conn, compactions), [values])
