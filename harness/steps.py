"""The transactions of a task's steps: the budget held for a call, the answer persisted with
its ledger rows, tool results appended, a claim with the task's state.

Every write is fenced by the task's :class:`~harness.store.queue.Lease` (worker and claim
number), the reservation included: a runner that lost its lease cannot reserve or make a paid
call. Ledger rows are written whether or not the lease still holds (the call was paid for);
the transcript only while it does. Each transaction function acts only through its connection
(``Store.write`` may run it twice).

Writes that must not be lost (an answer received, a failure recorded) go through
``Store.write_until_done``: a transient database error (a restart, a dropped connection, a
lock past its timeout) is waited out and the same write tried again, so no answer is dropped
and no step paid twice because the database blipped (invariant 7). A try that may have
committed although the error said otherwise (a connection dropped at COMMIT) is not applied
twice: the ledger finds the rows it wrote (by reservation), a reservation is found by its
key, and messages by their numbers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import anyio
from sqlalchemy import Connection, bindparam, func, select

from . import ledger
from .agents import AgentSpec
from .errors import LeaseLost
from .messages import ChatMessage
from .settings import Settings
from .store import Store, queue
from .store.access import RETRYING
from .store.artifacts import add_artifact
from .store.compactions import Compaction, add_compaction, load_compactions
from .store.engine import batch, run
from .store.queue import Lease, Task
from .store.schema import calls
from .store.transcripts import StoredMessage, append_messages, load_transcript
from .store.workers import is_alive
from .usage import CallRecord

__all__ = [
    "Reservation",
    "State",
    "append",
    "claim",
    "keep_artifact",
    "load_state",
    "load_transcript",
    "persist_compaction",
    "persist_step",
    "record_mask",
]


class Reservation:
    """The budget held for one model call (invariant 2); the provider's ``Attempts`` hooks.

    Before every attempt (:meth:`before`) its worst case is reserved, in the transaction that
    records the attempts failed so far and releases what they held: a task holds one
    reservation at a time, and a worker that dies mid-call leaves at most one behind. Near
    the end of a budget the attempt gets the room left (``max_tokens`` shrunk, never below
    ``budgets.min_output_tokens``). After the call its records settle the reservation
    (:func:`persist_step`, :meth:`record_failure`); if it ends otherwise (cancelled, the
    answer not storable) it is charged as an *unsettled* call only when the attempt may have
    reached a server (:meth:`sending` was called), and released when it never left.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        lease: Lease,
        agent: AgentSpec,
        *,
        opening: Sequence[ChatMessage] = (),
        on_opening: Callable[[list[StoredMessage]], None] | None = None,
    ) -> None:
        task = lease.task
        self.store, self.settings, self.lease = store, settings, lease
        self.ctx = ledger.CallContext(agent.name, task.run_id, task.id, lease.worker_id)
        self.budget, self.workspace_budget = agent.budget(settings), settings.budgets.workspace()
        self.opening = list(opening)  # a new task's first messages: stored with the first take
        self.on_opening = on_opening
        self.ids: list[int] = []  # the reservation taken and not yet settled
        self.settled = 0  # how many of the call's attempts are in the ledger already
        self.sent = False  # whether the attempt holding the reservation has left

    def unrecorded(self, records: Sequence[CallRecord]) -> Sequence[CallRecord]:
        """The attempts among ``records`` not in the ledger yet."""
        return records[self.settled :]

    async def before(
        self, model: str, failed: Sequence[CallRecord], *, prompt_tokens: int, max_tokens: int
    ) -> int:
        """Reserve the next attempt on ``model`` (recording ``failed``); returns the
        ``max_tokens`` granted. Raises BudgetExceeded (nothing written) or LeaseLost."""
        least = min(max_tokens, self.settings.budgets.min_output_tokens)
        ask = (model, prompt_tokens, max_tokens, least)
        new = list(self.unrecorded(failed))
        key = uuid.uuid4().hex  # one per attempt: a retried write finds what it took
        rid, granted, stored = await self.store.write_until_done(
            _next_attempt_tx, self, new, ask, self.opening, key
        )
        self.ids, self.settled, self.sent = [rid], len(failed), False
        if self.opening:
            self.opening = []
            if self.on_opening is not None:
                self.on_opening(stored)
        return granted

    def sending(self) -> None:
        self.sent = True

    async def record_failure(self, records: Sequence[CallRecord]) -> None:
        """The call failed for good: record its attempts, settle the reservation."""
        with anyio.CancelScope(shield=True):  # paid attempts are recorded, whatever comes
            await self.store.write_until_done(_record_tx, self, self.unrecorded(records))
        self.ids = []

    async def unsettle(self, why: str) -> None:
        """The call ended without a recorded answer: charge the reservation as *unsettled*
        if the attempt left this process, else give it back."""
        if not self.ids:
            return
        with anyio.CancelScope(shield=True):
            if self.sent:
                await self.store.write_until_done(_unsettle_tx, self.settings, self.ids, why)
            else:
                await self.store.write_until_done(_release_tx, self.ids)
        self.ids = []


def _record_tx(
    conn: Connection,
    held: Reservation,
    records: Sequence[CallRecord],
    roll_ups: ledger.RollUps | None = None,
) -> list[int]:
    """Record a call's attempts and settle the reservation held for it (the roll-ups written
    here, or added to ``roll_ups`` for the caller to write last)."""
    return ledger.record(
        conn, held.ctx, records, held.settings, extra_reservations=held.ids, roll_ups=roll_ups
    )


def _next_attempt_tx(
    conn: Connection,
    held: Reservation,
    failed: Sequence[CallRecord],
    ask: tuple[str, int, int, int],
    opening: list[ChatMessage],
    key: str,
) -> tuple[int, int, list[StoredMessage]]:
    """Check the lease (storing a new task's opening), record failed attempts, settling what
    they held, and reserve the next attempt on the day it is sent: in the global lock order
    (see ``ledger.writes``), the task's row first and the ledger's day rows last."""
    model, prompt_tokens, max_tokens, least = ask
    stored = _append_tx(conn, held.lease, opening, 0) if opening else []
    if not opening and not queue.touch(conn, held.lease):
        raise LeaseLost(held.lease.task_id)  # nothing reserved: nothing is sent
    _record_tx(conn, held, failed)
    rid, granted = ledger.reserve(
        conn,
        held.ctx,
        held.settings,
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        min_tokens=least,
        budget=held.budget,
        workspace_budget=held.workspace_budget,
        day=ledger.day_of(queue.now(), held.settings.tz),
        key=key,
    )
    return rid, granted, stored


def _unsettle_tx(
    conn: Connection, settings: Settings, reservations: Sequence[int], why: str
) -> None:
    ledger.settle_unsettled(conn, settings, reservations, why)


def _release_tx(conn: Connection, reservations: Sequence[int]) -> None:
    for rid in sorted(reservations):
        ledger.release(conn, rid)


def _written(conn: Connection, lease: Lease, first_seq: int) -> list[StoredMessage]:
    """Messages from ``first_seq`` on that an earlier try of this write committed, when it is
    being retried after a commit whose outcome was unknown (else none are looked for)."""
    return load_transcript(conn, lease.task_id, first_seq) if RETRYING.get() else []


def _append_tx(
    conn: Connection, lease: Lease, msgs: list[ChatMessage], first_seq: int
) -> list[StoredMessage]:
    """Append to the transcript of a task this lease still holds (LeaseLost when it does
    not: the transaction is rolled back, nothing written); ``first_seq`` comes from the
    runner's copy, which the lease keeps true. The lease's check and the messages go to the
    server together."""
    if RETRYING.get():  # an earlier try may have committed: look before writing
        if not queue.touch(conn, lease):
            raise LeaseLost(lease.task_id)
        return _written(conn, lease, first_seq) or append_messages(
            conn, lease.task_id, msgs, first_seq=first_seq
        )
    touched = None
    try:
        with batch(conn) as sent:
            touched = queue.send_touch(sent, lease)
            stored = append_messages(conn, lease.task_id, msgs, first_seq=first_seq)
    except Exception:  # e.g. the task's next owner wrote these numbers: the lease is lost
        if touched is not None and touched.rowcount == 0:
            raise LeaseLost(lease.task_id) from None
        raise
    if touched.rowcount != 1:
        raise LeaseLost(lease.task_id)
    return stored


async def append(
    store: Store, lease: Lease, msgs: list[ChatMessage], first_seq: int
) -> list[StoredMessage]:
    """Append tool results (or other messages) to the transcript; LeaseLost when the lease
    no longer holds."""
    return await store.write_until_done(_append_tx, lease, msgs, first_seq)


def _persist_step_tx(
    conn: Connection,
    held: Reservation,
    records: Sequence[CallRecord],
    message: ChatMessage,
    seq: int,
) -> list[StoredMessage] | None:
    """Ledger rows always (the call was paid for); the transcript only while the lease holds
    (None when it does not). A final answer completes the task in the same statement that
    counts the step. In the global lock order: the task's row first, the ledger's roll-ups
    last (see ``ledger.writes``)."""
    if done := _written(conn, held.lease, seq):  # an earlier try committed all of it
        return done
    result = None if message.tool_calls else message.content or ""
    roll_ups = ledger.RollUps()
    recorded = None
    with batch(conn) as sent:  # the task's row and (on a first try) the ledger's rows
        stepped = queue.send_step(sent, held.lease, result)
        if not RETRYING.get():  # a retried write's ledger looks before it writes, below
            recorded = ledger.send_record(
                sent, held.ctx, records, held.settings, held.ids, roll_ups
            )
    ids = recorded.finish(conn) if recorded else _record_tx(conn, held, records, roll_ups)
    owned = stepped.rowcount == 1
    call_id = ids[-1] if ids else None
    stored = None
    with batch(conn) as sent:  # the message and the roll-ups go to the server together
        if owned:
            stored = append_messages(
                conn, held.lease.task_id, [message], call_id=call_id, first_seq=seq
            )
        roll_ups.send(sent)
    return stored


async def persist_step(
    held: Reservation, records: Sequence[CallRecord], message: ChatMessage, seq: int
) -> list[StoredMessage]:
    """Persist an answer with its ledger rows and the settled reservation, in one
    transaction, before anything acts on it (invariant 1). Shielded from cancellation and
    tried again through database blips: an answer that arrived is never dropped. Raises
    LeaseLost when the task is no longer ours (the ledger rows are written all the same)."""
    try:
        with anyio.CancelScope(shield=True):
            appended = await held.store.write_until_done(
                _persist_step_tx, held, records, message, seq
            )
    except Exception:
        await held.unsettle("answered, but the answer could not be stored")
        raise
    held.ids = []
    if appended is None:
        raise LeaseLost(held.lease.task_id)
    return appended


@dataclass(frozen=True)
class State:
    """What a runner needs of a task to go on: its transcript and compactions, how many
    sub-tasks it has created (``limits.max_children``) and the tokens its calls used
    (``limits.max_task_tokens``)."""

    transcript: list[StoredMessage]
    children: int = 0
    compactions: list[Compaction] = field(default_factory=list)
    tokens: int = 0


_TASK_TOKENS = select(
    func.coalesce(func.sum(calls.c.prompt_tokens + calls.c.completion_tokens), 0)
).where(calls.c.task_id == bindparam("p_task"))


def load_state(conn: Connection, task: Task) -> State:
    """The task's state (one read). A task that has taken no model step yet has delegated,
    compacted and spent nothing: only its transcript is read. A task claimed for the first
    time has no transcript either (every write to one is fenced by a claim): nothing is read.
    (A task that was running when a database of schema 0001 was upgraded counts no claims:
    its first claim since finds messages where it writes its opening, fails that attempt
    before any call, and its next claim reads them.)"""
    if task.claims <= 1:
        return State([])
    transcript = load_transcript(conn, task.id)
    if not task.steps:
        return State(transcript)
    tokens = int(run(conn, _TASK_TOKENS, {"p_task": task.id}).fetchone()[0] or 0)
    children = queue.count_children(conn, task.id)
    return State(transcript, children, load_compactions(conn, task.id), tokens)


# -- compactions: recorded once, the summary with its ledger row -----------------------------


def _compaction_tx(
    conn: Connection,
    held: Reservation,
    records: Sequence[CallRecord],
    record: Compaction,
) -> int | None:
    """A summary's ledger rows (always: it was paid for) and its record (while the lease
    holds; None when it does not). Returns the summary call's ledger row. The task's row
    first, the ledger's roll-ups last (see ``ledger.writes``)."""
    owned = queue.touch(conn, held.lease)
    roll_ups = ledger.RollUps()
    ids = _record_tx(conn, held, records, roll_ups)
    call_id = ids[-1] if ids else None
    if owned:
        add_compaction(conn, held.lease.task_id, replace(record, call_id=call_id))
    roll_ups.write(conn)
    return call_id if owned else None


async def persist_compaction(
    held: Reservation, records: Sequence[CallRecord], record: Compaction
) -> Compaction:
    """Record a summary with the ledger rows of the call that wrote it, in one transaction
    (a resumed task finds it and does not summarise again). LeaseLost when not ours."""
    with anyio.CancelScope(shield=True):
        call_id = await held.store.write_until_done(_compaction_tx, held, records, record)
    held.ids = []
    if call_id is None and records:
        raise LeaseLost(held.lease.task_id)
    return replace(record, call_id=call_id)


def _mask_tx(
    conn: Connection, lease: Lease, record: Compaction, kept: list[tuple[int, str, str, str]]
) -> Compaction | None:
    """Keep each masked result whole (an artifact) and record the mask pointing at them."""
    if not queue.touch(conn, lease):
        return None
    ids = {
        seq: add_artifact(conn, lease.task.run_id, lease.task_id, call_id, name, content)
        for seq, call_id, name, content in kept
    }
    final = replace(record, summary=json.dumps(ids, sort_keys=True))
    add_compaction(conn, lease.task_id, final)
    return final


async def record_mask(
    store: Store, lease: Lease, record: Compaction, kept: list[tuple[int, str, str, str]]
) -> Compaction:
    """Record a mask over ``record``'s span; ``kept``: (seq, tool call id, tool, content) of
    each result it masks."""
    final = await store.write_until_done(_mask_tx, lease, record, kept)
    if final is None:
        raise LeaseLost(lease.task_id)
    return final


def _artifact_tx(
    conn: Connection, lease: Lease, call_id: str, name: str, content: str
) -> int | None:
    if not queue.touch(conn, lease):
        return None
    return add_artifact(conn, lease.task.run_id, lease.task_id, call_id, name, content)


async def keep_artifact(store: Store, lease: Lease, call_id: str, name: str, content: str) -> int:
    """Keep a large result whole; its id (the same for the same tool call, on a resume)."""
    artifact = await store.write_until_done(_artifact_tx, lease, call_id, name, content)
    if artifact is None:
        raise LeaseLost(lease.task_id)
    return artifact


def claim(
    conn: Connection, worker_id: int, lease_s: float, limit: int = 1, *, run_id: int | None = None
) -> list[tuple[Task, State]] | None:
    """The worker's claim: lease runnable tasks to the live worker epoch ``worker_id``
    (``queue.claim``) and read each one's state in the same transaction, so a runner starts
    without a read of its own. None when that epoch was declared dead (it must start a new
    one); it is asked only when nothing was claimed, the claim having checked it."""
    claimed = queue.claim(conn, worker_id, lease_s, limit, run_id=run_id, live=True)
    if not claimed and not is_alive(conn, worker_id):
        return None
    return [(task, load_state(conn, task)) for task in claimed]
