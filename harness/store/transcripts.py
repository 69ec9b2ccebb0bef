"""Task transcripts: the messages of a task in order (``seq``), each with the ledger row of
the call that produced it. Functions of a connection."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, insert, select

from .. import clock
from ..messages import ChatMessage, ToolCall
from .engine import run
from .schema import messages

__all__ = ["StoredMessage", "append_messages", "load_transcript"]


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    message: ChatMessage
    call_id: int | None
    created_at: float


_TRANSCRIPT = (
    select(
        messages.c.seq,
        messages.c.role,
        messages.c.content,
        messages.c.tool_calls,
        messages.c.tool_call_id,
        messages.c.name,
        messages.c.call_id,
        messages.c.created_at,
    )
    .where(messages.c.task_id == bindparam("p_task"), messages.c.seq >= bindparam("p_from"))
    .order_by(messages.c.seq)
)


def load_transcript(conn: Connection, task_id: int, from_seq: int = 0) -> list[StoredMessage]:
    """A task's messages in order (those numbered ``from_seq`` and after)."""
    out = []
    for seq, role, content, tool_calls, tool_call_id, name, call_id, created_at in run(
        conn, _TRANSCRIPT, {"p_task": task_id, "p_from": from_seq}
    ):
        calls = [ToolCall.model_validate(c) for c in json.loads(tool_calls)] if tool_calls else None
        msg = ChatMessage(
            role=role, content=content, tool_calls=calls, tool_call_id=tool_call_id, name=name
        )
        out.append(StoredMessage(seq, msg, call_id, created_at))
    return out


_INSERT_MESSAGE = insert(messages)


def append_messages(
    conn: Connection,
    task_id: int,
    msgs: Sequence[ChatMessage],
    *,
    first_seq: int,
    call_id: int | None = None,
) -> list[StoredMessage]:
    """Append messages to a task's transcript, numbered from ``first_seq`` (the next number
    in the caller's copy of the transcript: the task's lease owner, checked in this
    transaction; the unique (task, seq) key refuses a wrong one); returns them as stored,
    so callers need not read the transcript again."""
    seq = first_seq - 1
    t = clock.now()
    rows = []
    stored = []
    for msg in msgs:
        seq += 1
        calls = json.dumps([c.model_dump() for c in msg.tool_calls]) if msg.tool_calls else None
        rows.append(
            {
                "task_id": task_id,
                "seq": seq,
                "role": msg.role,
                "content": msg.content,
                "tool_calls": calls,
                "tool_call_id": msg.tool_call_id,
                "name": msg.name,
                "call_id": call_id,
                "created_at": t,
            }
        )
        stored.append(StoredMessage(seq, msg, call_id, t))
    if rows:
        run(conn, _INSERT_MESSAGE, rows)
    return stored
