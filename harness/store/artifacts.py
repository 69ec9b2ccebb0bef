"""Artifacts: large tool (and sub-task) results kept whole, read back in slices.

The transcript holds the head of such a result and a pointer (``read_artifact``); the whole
text lives here, tied to its run (a task reads only its own run's artifacts). Functions of a
connection.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, insert, select

from .. import clock
from .engine import run
from .schema import artifacts

__all__ = ["add_artifact", "get_artifact"]

_FIND = select(artifacts.c.id).where(
    artifacts.c.task_id == bindparam("p_task"), artifacts.c.tool_call_id == bindparam("p_call")
)
_INSERT = insert(artifacts).returning(artifacts.c.id)
_GET = select(artifacts.c.name, artifacts.c.content).where(
    artifacts.c.id == bindparam("p_id"), artifacts.c.run_id == bindparam("p_run")
)


def add_artifact(
    conn: Connection, run_id: int, task_id: int, tool_call_id: str, name: str, content: str
) -> int:
    """Keep ``content`` whole; one per (task, tool call): a result kept again (a resumed
    task) gets the same id."""
    found = run(conn, _FIND, {"p_task": task_id, "p_call": tool_call_id}).fetchone()
    if found is not None:
        return int(found[0])
    row = {
        "run_id": run_id,
        "task_id": task_id,
        "tool_call_id": tool_call_id,
        "name": name,
        "content": content,
        "chars": len(content),
        "created_at": clock.now(),
    }
    return int(run(conn, _INSERT, row).fetchone()[0])


def get_artifact(conn: Connection, artifact_id: int, run_id: int) -> tuple[str, str] | None:
    """``(name, content)`` of an artifact of run ``run_id``, or None."""
    row = run(conn, _GET, {"p_id": artifact_id, "p_run": run_id}).fetchone()
    return (str(row[0] or ""), str(row[1])) if row else None
