"""Agents' notes (their long-term memory): append, search, read. Functions of a connection."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, or_, select

from .. import clock
from .schema import notes

__all__ = ["add_note", "find_notes"]


def add_note(conn: Connection, agent: str, text: str) -> int:
    row = conn.execute(insert(notes).values(agent=agent, text=text, created_at=clock.now()))
    return int(row.inserted_primary_key[0])  # type: ignore[index]


def find_notes(
    conn: Connection, agent: str, query: str | None, limit: int
) -> list[tuple[int, str, datetime]]:
    stmt = select(notes.c.id, notes.c.text, notes.c.created_at).where(notes.c.agent == agent)
    if query:
        words = [w for w in query.lower().split() if w]
        stmt = stmt.where(
            or_(*[func.lower(notes.c.text).contains(w, autoescape=True) for w in words])
        )
    rows = conn.execute(stmt.order_by(notes.c.id.desc()).limit(limit)).all()
    return [(r.id, r.text, datetime.fromtimestamp(r.created_at, UTC)) for r in rows]
