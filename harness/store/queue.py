"""Queue transitions on the task store. Each takes an open write transaction (``Connection``).

Every status change is one guarded UPDATE whose row count is checked (invariant 4): a task is
moved only from the states it may leave, and a running task only under the :class:`Lease` of
the claim that holds it (worker and claim number: a worker that claims its own reaped task
again cannot have an old runner pass as the owner). Claims use ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL and a guarded ``UPDATE ... RETURNING`` inside a ``BEGIN IMMEDIATE`` transaction on
SQLite.

Lease times (expiry, heartbeats) come from the database's clock on PostgreSQL, so several
machines need no clock agreement for correctness (:func:`lease_now`; a statement that only
writes or compares them reads that clock itself, :func:`lease_clock`); other times are the
process's clock (:mod:`harness.clock`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from .. import clock
from ..errors import LeaseLost
from ..scrub import storable
from .engine import (
    DB_CLOCK,
    Batch,
    batch,
    insert_ignore,
    is_postgres,
    lease_clock,
    lease_now,
    run,
)
from .schema import TERMINAL, TaskStatus, runs, tasks, workers

ACTIVE = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.WAITING, TaskStatus.PAUSED)


@dataclass(frozen=True)
class Task:
    """A snapshot of one task row."""

    id: int
    run_id: int
    parent_id: int | None
    parent_call_id: str | None
    agent: str
    input: str
    status: TaskStatus
    depth: int
    attempts: int
    max_attempts: int
    steps: int
    priority: int
    claims: int = 0
    status_reason: str | None = None
    result: str | None = None
    error: str | None = None

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Task:
        """From the values of ``_TASK_COLUMNS``, in their order."""
        values = list(values)
        values[_STATUS] = TaskStatus(values[_STATUS])
        return cls(*values)


@dataclass(frozen=True)
class Lease:
    """One claim of a task by a worker: the snapshot taken at the claim, and who holds it.
    Every write of the claim is fenced by (task, worker, claim number)."""

    task: Task
    worker_id: int

    @property
    def task_id(self) -> int:
        return self.task.id

    def params(self) -> dict[str, int]:
        return {"task_id": self.task.id, "worker_id": self.worker_id, "claim": self.task.claims}


_TASK_FIELDS = tuple(f.name for f in fields(Task))
_STATUS = _TASK_FIELDS.index("status")
_TASK_COLUMNS = tuple(tasks.c[name] for name in _TASK_FIELDS)  # a Task's, in field order


@dataclass(frozen=True)
class NewTask:
    agent: str
    input: str
    parent_call_id: str  # the parent's delegate call: one child per call (its unique key)
    priority: int = 0


now = clock.now


_INSERT_RUN = insert(runs).returning(runs.c.id)
_INSERT_TASK = insert(tasks).returning(tasks.c.id)
_SET_ROOT = (
    update(runs).where(runs.c.id == bindparam("p_run")).values(root_task_id=bindparam("p_task"))
)
_PARENT_OF = select(tasks.c.parent_id).where(tasks.c.id == bindparam("p_task"))


def create_run(
    conn: Connection,
    goal: str,
    agent: str,
    *,
    max_attempts: int,
    schedule: str | None = None,
    priority: int = 0,
) -> tuple[int, int]:
    """Insert a run and its root task (queued). Returns ``(run_id, task_id)``. The goal is
    stored as :func:`harness.scrub.storable` makes it (no NUL, no lone surrogate)."""
    goal = storable(goal)
    t = now()
    values = {"goal": goal, "agent": agent, "schedule": schedule, "created_at": t}
    run_id = run(conn, _INSERT_RUN, values).fetchone()[0]
    task = {
        "run_id": run_id,
        "agent": agent,
        "input": goal,
        "status": TaskStatus.QUEUED.value,
        "priority": priority,
        "max_attempts": max_attempts,
        "created_at": t,
        "updated_at": t,
    }
    task_id = run(conn, _INSERT_TASK, task).fetchone()[0]
    run(conn, _SET_ROOT, {"p_run": run_id, "p_task": task_id})
    return int(run_id), int(task_id)


@cache
def _claim_statements(postgres: bool, one_run: bool, live: bool = False) -> Any:
    """The claim statement, built once per shape (construction costs more than running it).
    Parameters: t, lease_s, w, limit, p_run. The lease runs from the database's clock on
    PostgreSQL (read by the statement itself: no round trip of its own), from ``t`` on
    SQLite (:func:`harness.store.engine.lease_now`)."""
    t: Any = bindparam("t")
    runnable = and_(tasks.c.status == TaskStatus.QUEUED, tasks.c.not_before <= t)
    if one_run:
        runnable = and_(runnable, tasks.c.run_id == bindparam("p_run"))
    pick = select(tasks.c.id).where(runnable)
    if live:
        pick = pick.where(
            exists().where(workers.c.id == bindparam("w"), workers.c.stopped_at.is_(None))
        )
    pick = pick.order_by(tasks.c.priority.desc(), tasks.c.id).limit(bindparam("limit"))
    if postgres:  # one statement: lock the picked rows (skipping locked ones), update them
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        chosen = and_(tasks.c.id == picked.c.id, runnable)  # checked again once locked
    else:
        # the picked rows cannot change before the update (SQLite has one writer), and a
        # second ``status = 'queued'`` here would make SQLite walk the whole queue through
        # ix_tasks_claim instead of fetching the picked ids by primary key
        chosen = tasks.c.id.in_(pick.scalar_subquery())
    stmt = (
        update(tasks)
        .where(chosen)
        .values(
            status=TaskStatus.RUNNING,
            lease_owner=bindparam("w"),
            lease_expires_at=(DB_CLOCK if postgres else t) + bindparam("lease_s"),
            attempts=tasks.c.attempts + 1,
            claims=tasks.c.claims + 1,
            started_at=func.coalesce(tasks.c.started_at, t),
            updated_at=t,
            status_reason=None,
        )
        .returning(*_TASK_COLUMNS)
    )
    return stmt


def claim(
    conn: Connection,
    worker_id: int,
    lease_s: float,
    limit: int = 1,
    *,
    run_id: int | None = None,
    live: bool = False,
) -> list[Task]:
    """Lease up to ``limit`` runnable queued tasks to ``worker_id`` (highest priority first),
    optionally only tasks of one run. ``live``: only while ``worker_id`` is a live worker
    epoch (its ``workers`` row not stopped nor declared dead), checked by the claim itself;
    a worker that gets nothing asks :func:`harness.store.workers.is_alive` which it was."""
    params: dict[str, Any] = {"t": now(), "lease_s": lease_s, "w": worker_id, "limit": limit}
    if run_id is not None:
        params["p_run"] = run_id
    stmt = _claim_statements(is_postgres(conn), run_id is not None, live)
    claimed = [Task.from_values(row) for row in run(conn, stmt, params).fetchall()]
    return sorted(claimed, key=lambda task: (-task.priority, task.id))


def heartbeat(
    conn: Connection, worker_id: int, task_ids: Sequence[int], lease_s: float
) -> set[int]:
    """Extend the leases this worker still holds. Returns the ids it still owns."""
    if not task_ids:
        return set()
    stmt = (
        update(tasks)
        .where(
            tasks.c.id.in_(list(task_ids)),
            tasks.c.lease_owner == worker_id,
            tasks.c.status == TaskStatus.RUNNING,
        )
        .values(lease_expires_at=lease_clock(conn) + lease_s)
        .returning(tasks.c.id)
    )
    return {r[0] for r in conn.execute(stmt)}


def _owned() -> Any:
    """The lease's task, still running under this very claim (parameters of ``Lease.params``)."""
    return and_(
        tasks.c.id == bindparam("task_id"),
        tasks.c.status == TaskStatus.RUNNING,
        tasks.c.lease_owner == bindparam("worker_id"),
        tasks.c.claims == bindparam("claim"),
    )


@cache
def _move_statement(keys: tuple[str, ...], uncharge: bool, step: bool) -> Any:
    """``UPDATE tasks SET <keys> WHERE <owned> RETURNING parent_id``, built once per shape."""
    values: dict[str, Any] = {k: bindparam(f"v_{k}") for k in keys}
    if uncharge:  # a release, pause or wait is not a failed attempt
        values["attempts"] = tasks.c.attempts - 1
    if step:  # the move comes with the step that led to it (see ``touch``)
        values["steps"] = tasks.c.steps + 1
    return update(tasks).where(_owned()).values(values).returning(tasks.c.parent_id)


def _moving(
    lease: Lease, *, uncharge: bool = False, step: bool = False, **values: Any
) -> tuple[Any, dict[str, Any]]:
    """The statement and parameters of a guarded transition out of ``running``."""
    t = now()
    values.setdefault("updated_at", t)
    if values.get("status") in TERMINAL:
        values.setdefault("finished_at", t)
    if values.get("status") != TaskStatus.RUNNING:
        values.update(lease_owner=None, lease_expires_at=None)
    stmt = _move_statement(tuple(sorted(values)), uncharge, step)
    return stmt, {**lease.params(), **{f"v_{k}": v for k, v in values.items()}}


def _move(
    conn: Connection, lease: Lease, *, uncharge: bool = False, step: bool = False, **values: Any
) -> int | None:
    """Guarded transition out of ``running`` under ``lease``; LeaseLost when it no longer
    holds. Returns the task's parent id."""
    moved = run(conn, *_moving(lease, uncharge=uncharge, step=step, **values)).fetchall()
    if len(moved) != 1:
        raise LeaseLost(lease.task_id)
    parent_id: int | None = moved[0][0]
    return parent_id


_TOUCH = (
    update(tasks)
    .where(_owned())
    .values(updated_at=bindparam("t"), steps=tasks.c.steps + bindparam("delta"))
)


def touch(conn: Connection, lease: Lease, steps_delta: int = 0) -> bool:
    """Check (and record) that ``lease`` still holds its running task. True when it does."""
    return bool(run(conn, _TOUCH, _touch_params(lease, steps_delta)).rowcount == 1)


def send_touch(sent: Batch, lease: Lease) -> Any:
    """:func:`touch`, sent with a batch's other statements: the lease held when the cursor
    returned has a ``rowcount`` of 1 once the batch has ended."""
    return sent.run(_TOUCH, _touch_params(lease, 0))


def _touch_params(lease: Lease, steps_delta: int) -> dict[str, Any]:
    return {**lease.params(), "t": now(), "delta": steps_delta}


def complete(conn: Connection, lease: Lease, result: str, *, step: bool = False) -> None:
    """The task is done with ``result`` (``step``: counting the model step that gave it)."""
    parent_id = _move(conn, lease, step=step, status=TaskStatus.DONE, result=result, error=None)
    if parent_id is not None:
        wake_parent(conn, parent_id)


def send_step(sent: Batch, lease: Lease, result: str | None) -> Any:
    """A model step counted, sent with a batch's other statements: the task goes on
    (``result`` None: :func:`touch`) or is done with ``result`` (:func:`complete`, its
    parent woken when all its siblings are settled: the wake-up is sent too, and finds
    nothing to do when the lease no longer held). The lease held when the returned cursor
    has a ``rowcount`` of 1 once the batch has ended."""
    if result is None:
        return sent.run(_TOUCH, _touch_params(lease, 1))
    moved = sent.run(*_moving(lease, step=True, status=TaskStatus.DONE, result=result, error=None))
    if (parent_id := lease.task.parent_id) is not None:
        send_wake_parent(sent, parent_id)
    return moved


def fail(
    conn: Connection, lease: Lease, error: str, *, retry: bool = False, backoff_s: float = 0.0
) -> TaskStatus:
    """Fail a task. With ``retry`` and attempts left it is queued again after ``backoff_s``;
    otherwise it is dead-lettered as ``failed`` with the error and attempt count kept."""
    task = lease.task
    if retry and task.attempts < task.max_attempts:
        _move(
            conn,
            lease,
            status=TaskStatus.QUEUED,
            not_before=now() + backoff_s,
            error=error,
            status_reason=f"retrying after attempt {task.attempts}: {error}",
        )
        return TaskStatus.QUEUED
    parent_id = _move(conn, lease, status=TaskStatus.FAILED, error=error)
    if parent_id is not None:
        wake_parent(conn, parent_id)
    return TaskStatus.FAILED


def release(conn: Connection, lease: Lease, reason: str, *, delay_s: float = 0.0) -> None:
    """Give a running task back to the queue (runnable again after ``delay_s``), without
    charging an attempt."""
    _move(
        conn,
        lease,
        status=TaskStatus.QUEUED,
        uncharge=True,
        status_reason=reason,
        not_before=now() + delay_s,
    )


def pause(conn: Connection, lease: Lease, reason: str, until: float, budget_key: str) -> None:
    """Park a task that is out of budget until ``until`` (the next day) or until its agent's
    budget differs from ``budget_key`` (see ``requeue_paused``)."""
    _move(
        conn,
        lease,
        status=TaskStatus.PAUSED,
        status_reason=reason,
        not_before=until,
        pause_budget=budget_key,
        uncharge=True,
    )


_CHILD_IDS = select(tasks.c.parent_call_id, tasks.c.id).where(
    tasks.c.parent_id == bindparam("p_parent")
)


def spawn_children(conn: Connection, lease: Lease, children: Iterable[NewTask]) -> list[int]:
    """Create child tasks (idempotent per parent tool call: the unique (parent, call) key
    keeps the one made by an earlier try) and make the parent wait.

    Children and the parent's move to ``waiting`` commit together, so a crash leaves either
    both or neither. Returns the ids of all children of the given calls, in their order.
    """
    parent = lease.task
    t = now()
    rows = [
        {
            "run_id": parent.run_id,
            "parent_id": parent.id,
            "parent_call_id": child.parent_call_id,
            "agent": child.agent,
            "input": child.input,
            "status": TaskStatus.QUEUED.value,
            "priority": parent.priority + child.priority,
            "depth": parent.depth + 1,
            "max_attempts": parent.max_attempts,
            "created_at": t,
            "updated_at": t,
        }
        for child in children
    ]
    if rows:
        run(conn, insert_ignore(conn, tasks), rows)
    made = dict(run(conn, _CHILD_IDS, {"p_parent": parent.id}).fetchall())
    ids = [int(made[row["parent_call_id"]]) for row in rows]
    _move(
        conn,
        lease,
        status=TaskStatus.WAITING,
        status_reason=f"waiting for {len(ids)} sub-task(s)",
        uncharge=True,
    )
    wake_parent(conn, parent.id)
    return ids


def wake_parent_of(conn: Connection, task_id: int) -> None:
    row = run(conn, _PARENT_OF, {"p_task": task_id}).fetchone()
    if row is not None and row[0] is not None:
        wake_parent(conn, row[0])


_LOCK_PARENT = select(tasks.c.id).where(tasks.c.id == bindparam("p_parent")).with_for_update()
_CHILD = tasks.alias("child")
_WAKE_PARENT = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("p_parent"),
        tasks.c.status == TaskStatus.WAITING,
        ~exists().where(
            _CHILD.c.parent_id == bindparam("p_parent"),
            *[_CHILD.c.status != s.value for s in TERMINAL],
        ),
    )
    .values(status=TaskStatus.QUEUED, status_reason="sub-tasks settled", updated_at=bindparam("t"))
)


def wake_parent(conn: Connection, parent_id: int) -> bool:
    """Queue a waiting parent once all its children are settled. True when it was woken.

    On PostgreSQL the parent row is locked first, so two children finishing at the same time
    cannot both miss the wake-up (each would otherwise not see the other's commit).
    """
    with batch(conn) as sent:
        woken = send_wake_parent(sent, parent_id)
    return bool(woken.rowcount == 1)


def send_wake_parent(sent: Batch, parent_id: int) -> Any:
    """:func:`wake_parent` sent with a batch's other statements; woken when the returned
    cursor has a ``rowcount`` of 1 once the batch has ended."""
    if sent.postgres:
        sent.run(_LOCK_PARENT, {"p_parent": parent_id})
    return sent.run(_WAKE_PARENT, {"p_parent": parent_id, "t": now()})


def reap_expired(
    conn: Connection, dead_workers: Sequence[int] = (), *, exclude: int | None = None
) -> int:
    """Return tasks with an expired lease (or held by a known-dead worker) to the queue;
    tasks out of attempts are failed. Returns how many tasks were touched.

    ``exclude``: the calling worker's own id. Its leases only look expired when its own
    heartbeat is late, and its runners are still going; other workers reap them instead.
    """
    t = now()
    expired = tasks.c.lease_expires_at < lease_now(conn)
    if exclude is not None:
        expired = and_(expired, tasks.c.lease_owner != exclude)
    orphan = or_(expired, tasks.c.lease_owner.in_(list(dead_workers)))
    base = and_(tasks.c.status == TaskStatus.RUNNING, orphan)
    failed = conn.execute(
        update(tasks)
        .where(base, tasks.c.attempts >= tasks.c.max_attempts)
        .values(
            status=TaskStatus.FAILED,
            error=func.coalesce(tasks.c.error, "worker lost while running the last attempt"),
            lease_owner=None,
            lease_expires_at=None,
            finished_at=t,
            updated_at=t,
        )
        .returning(tasks.c.id)
    ).all()
    for (task_id,) in failed:
        wake_parent_of(conn, task_id)
    requeued = conn.execute(
        update(tasks)
        .where(base)
        .values(
            status=TaskStatus.QUEUED,
            status_reason="lease expired: worker lost",
            lease_owner=None,
            lease_expires_at=None,
            updated_at=t,
        )
    ).rowcount
    return len(failed) + requeued


def wake_waiting(conn: Connection) -> int:
    """Queue every waiting task whose children are all settled (a sweep; normally a child's
    own transition wakes its parent)."""
    child = tasks.alias("child")
    unsettled = exists().where(
        child.c.parent_id == tasks.c.id, child.c.status.not_in([s.value for s in TERMINAL])
    )
    return conn.execute(
        update(tasks)
        .where(tasks.c.status == TaskStatus.WAITING, ~unsettled)
        .values(status=TaskStatus.QUEUED, status_reason="sub-tasks settled", updated_at=now())
    ).rowcount


def paused_agents(conn: Connection) -> list[str]:
    stmt = select(tasks.c.agent).where(tasks.c.status == TaskStatus.PAUSED).distinct()
    return list(conn.execute(stmt).scalars())


def requeue_paused(conn: Connection, budget_keys: Mapping[str, str] | None = None) -> int:
    """Queue paused tasks whose pause is over (the next day has started), or whose agent's
    budget (``budget_keys``: agent -> current budget key) changed since they were paused."""
    cond = tasks.c.not_before <= now()
    for agent, key in (budget_keys or {}).items():
        cond = or_(cond, and_(tasks.c.agent == agent, tasks.c.pause_budget != key))
    return conn.execute(
        update(tasks)
        .where(tasks.c.status == TaskStatus.PAUSED, cond)
        .values(status=TaskStatus.QUEUED, not_before=0.0, pause_budget=None, updated_at=now())
    ).rowcount


def cancel_run(conn: Connection, run_id: int, reason: str = "cancelled by user") -> int:
    """Cancel every unfinished task of a run (the whole tree). Returns how many.

    On PostgreSQL the tasks are locked children first (descending id), the order in which a
    finishing child and its parent's wake-up lock them, so the two cannot deadlock.
    """
    t = now()
    active = and_(tasks.c.run_id == run_id, tasks.c.status.in_([s.value for s in ACTIVE]))
    if is_postgres(conn):
        conn.execute(select(tasks.c.id).where(active).order_by(tasks.c.id.desc()).with_for_update())
    return conn.execute(
        update(tasks)
        .where(active)
        .values(
            status=TaskStatus.CANCELLED,
            status_reason=reason,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=t,
            updated_at=t,
        )
    ).rowcount


_TASKS = select(*_TASK_COLUMNS)
_TASK_BY_ID = _TASKS.where(tasks.c.id == bindparam("p_task"))
_CHILDREN = _TASKS.where(tasks.c.parent_id == bindparam("p_parent")).order_by(tasks.c.id)


def get_task(conn: Connection, task_id: int) -> Task | None:
    row = run(conn, _TASK_BY_ID, {"p_task": task_id}).fetchone()
    return Task.from_values(row) if row else None


def children(conn: Connection, parent_id: int) -> list[Task]:
    """A task's children, oldest first."""
    return [Task.from_values(r) for r in run(conn, _CHILDREN, {"p_parent": parent_id}).fetchall()]


def has_runnable(conn: Connection, run_id: int | None = None) -> bool:
    """Whether any task (of ``run_id``, if given) is queued or running, whatever its not_before."""
    cond: ColumnElement[bool] = tasks.c.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING])
    if run_id is not None:
        cond = and_(cond, tasks.c.run_id == run_id)
    return conn.execute(select(tasks.c.id).where(cond).limit(1)).first() is not None


def run_blocked_or_settled(conn: Connection, run_id: int) -> bool:
    """True when a run's root task is settled, or no task of it is queued or running."""
    root = conn.execute(
        select(tasks.c.status).where(tasks.c.run_id == run_id, tasks.c.parent_id.is_(None))
    ).scalar()
    return root is None or root in TERMINAL or not has_runnable(conn, run_id)


_COUNT_CHILDREN = (
    select(func.count()).select_from(tasks).where(tasks.c.parent_id == bindparam("p_parent"))
)


def count_children(conn: Connection, parent_id: int) -> int:
    return int(run(conn, _COUNT_CHILDREN, {"p_parent": parent_id}).fetchone()[0] or 0)
