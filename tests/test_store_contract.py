"""The task store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from harness.errors import LeaseLost
from harness.store import Store, queue, workers
from harness.store.queue import Lease, NewTask
from harness.store.schema import TaskStatus, tasks
from harness.store.schema import workers as workers_table


def _run(store: Store, goal: str = "g", agent: str = "arnold", **kw: Any) -> int:
    return store.write_sync(
        queue.create_run, goal, agent, max_attempts=kw.pop("max_attempts", 3), **kw
    )[1]


def _status(store: Store, task_id: int) -> TaskStatus:
    task = store.read_sync(queue.get_task, task_id)
    assert task is not None
    return task.status


def test_claim_leases_a_task_once(store: Store) -> None:
    tid = _run(store)
    [task] = store.write_sync(queue.claim, 1, 60)
    assert task.id == tid and task.status == TaskStatus.RUNNING and task.attempts == 1
    assert store.write_sync(queue.claim, 2, 60) == []


def test_claim_order_is_priority_then_age(store: Store) -> None:
    low = _run(store, "low")
    high = _run(store, "high", priority=5)
    later = _run(store, "later")
    claimed = store.write_sync(queue.claim, 1, 60, 3)
    assert [t.id for t in claimed] == [high, low, later]


def test_claim_can_be_limited_to_a_run(store: Store) -> None:
    _run(store, "other")
    mine = _run(store, "mine")
    run_id = store.read_sync(queue.get_task, mine).run_id  # type: ignore[union-attr]
    [task] = store.write_sync(queue.claim, 1, 60, 5, run_id=run_id)
    assert task.id == mine


@pytest.mark.parametrize("one_run", [False, True])
def test_a_sqlite_claim_fetches_the_picked_tasks_by_primary_key(
    sqlite_url: str, one_run: bool
) -> None:
    """The claim walks the queue index once, to pick; the update then fetches the picked
    ids by primary key, so its cost does not grow with the number of queued tasks."""
    store = Store.open(sqlite_url)
    stmt = queue._claim_statements(postgres=False, one_run=one_run)
    with store.engine.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect)
        params = {"t": 0.0, "exp": 60.0, "w": 1, "limit": 1, "p_run": 1}
        values = {k: b.effective_value for k, b in compiled.binds.items()} | params
        args = [values[k] for k in compiled.positiontup]
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.string}", tuple(args)).all()
    steps = [row[3] for row in plan]
    assert steps[0].startswith("SEARCH tasks USING INTEGER PRIMARY KEY"), steps
    assert sum("ix_tasks_claim" in s for s in steps) == 1, steps  # only the pick
    store.close()


def test_transitions_are_guarded_by_the_lease(store: Store) -> None:
    tid = _run(store)
    [task] = store.write_sync(queue.claim, 1, 60)
    with pytest.raises(LeaseLost):
        store.write_sync(queue.complete, Lease(task, 2), "not mine")
    store.write_sync(queue.complete, Lease(task, 1), "answer")
    with pytest.raises(LeaseLost):  # completes once
        store.write_sync(queue.complete, Lease(task, 1), "again")
    done = store.read_sync(queue.get_task, tid)
    assert done is not None and done.status == TaskStatus.DONE and done.result == "answer"


def test_expired_lease_is_reclaimed_and_attempts_run_out(store: Store) -> None:
    tid = _run(store, max_attempts=2)
    [first] = store.write_sync(queue.claim, 1, 0.01)
    time.sleep(0.05)
    assert store.write_sync(queue.reap_expired) == 1
    [again] = store.write_sync(queue.claim, 2, 0.01)
    assert again.id == tid and again.attempts == 2
    with pytest.raises(LeaseLost):  # the first worker lost it
        store.write_sync(queue.complete, Lease(first, 1), "late")
    time.sleep(0.05)
    store.write_sync(queue.reap_expired)
    task = store.read_sync(queue.get_task, tid)
    assert task is not None and task.status == TaskStatus.FAILED and task.attempts == 2
    assert "worker lost" in (task.error or "")


def test_heartbeat_extends_only_owned_leases(store: Store) -> None:
    a, b = _run(store), _run(store)
    store.write_sync(queue.claim, 1, 0.2, 1)
    store.write_sync(queue.claim, 2, 60, 1)
    assert store.write_sync(queue.heartbeat, 1, [a, b], 60) == {a}
    time.sleep(0.3)
    assert store.write_sync(queue.reap_expired) == 0  # extended


def test_failed_task_retries_after_backoff_then_dead_letters(store: Store) -> None:
    tid = _run(store, max_attempts=2)
    [task] = store.write_sync(queue.claim, 1, 60)
    assert (
        store.write_sync(queue.fail, Lease(task, 1), "boom", retry=True, backoff_s=0.3)
        == TaskStatus.QUEUED
    )
    assert store.write_sync(queue.claim, 1, 60) == []  # not before the backoff
    time.sleep(0.35)
    [task] = store.write_sync(queue.claim, 1, 60)
    failed = store.write_sync(queue.fail, Lease(task, 1), "boom again", retry=True)
    assert failed == TaskStatus.FAILED
    done = store.read_sync(queue.get_task, tid)
    assert done is not None and done.error == "boom again" and done.attempts == 2


def test_release_gives_the_task_back_without_charging_an_attempt(store: Store) -> None:
    tid = _run(store)
    [claimed] = store.write_sync(queue.claim, 1, 60)
    store.write_sync(queue.release, Lease(claimed, 1), "shutting down")
    [task] = store.write_sync(queue.claim, 2, 60)
    assert task.id == tid and task.attempts == 1


def test_children_wake_their_parent_once_all_are_settled(store: Store) -> None:
    pid = _run(store)
    [parent] = store.write_sync(queue.claim, 1, 60)
    kids = [NewTask("veblen", "a", "call-1"), NewTask("simmons", "b", "call-2")]
    ids = store.write_sync(queue.spawn_children, Lease(parent, 1), kids)
    assert _status(store, pid) == TaskStatus.WAITING
    # idempotent per tool call: a resumed parent does not create them twice
    claimed = store.write_sync(queue.claim, 2, 60, 5)
    assert sorted(t.id for t in claimed) == sorted(ids)
    assert all(t.depth == 1 for t in claimed)
    first, second = claimed
    store.write_sync(queue.complete, Lease(first, 2), "one")
    assert _status(store, pid) == TaskStatus.WAITING
    store.write_sync(queue.fail, Lease(second, 2), "broke")
    assert _status(store, pid) == TaskStatus.QUEUED
    [again] = store.write_sync(queue.claim, 1, 60)
    assert again.id == pid
    assert store.write_sync(queue.spawn_children, Lease(again, 1), kids) == ids  # no duplicates


def test_pause_then_requeue_on_next_day_or_budget_change(store: Store) -> None:
    _run(store)
    [claimed] = store.write_sync(queue.claim, 1, 60)
    store.write_sync(queue.pause, Lease(claimed, 1), "out of budget", time.time() + 3600, "[100]")
    assert store.write_sync(queue.requeue_paused, {"arnold": "[100]"}) == 0
    assert store.read_sync(queue.paused_agents) == ["arnold"]
    assert store.write_sync(queue.requeue_paused, {"arnold": "[200]"}) == 1
    [task] = store.write_sync(queue.claim, 1, 60)
    assert task.attempts == 1  # a pause is not a failed attempt
    store.write_sync(queue.pause, Lease(task, 1), "out of budget", time.time() - 1, "[200]")
    assert store.write_sync(queue.requeue_paused, {}) == 1  # the day turned


def test_cancel_run_cancels_the_tree_and_running_work_notices(store: Store) -> None:
    pid = _run(store)
    [parent] = store.write_sync(queue.claim, 1, 60)
    [kid] = store.write_sync(queue.spawn_children, Lease(parent, 1), [NewTask("veblen", "x", "c1")])
    [child] = store.write_sync(queue.claim, 2, 60)
    assert store.write_sync(queue.cancel_run, parent.run_id) == 2
    assert {_status(store, pid), _status(store, kid)} == {TaskStatus.CANCELLED}
    assert not store.write_sync(queue.touch, Lease(child, 2))
    with pytest.raises(LeaseLost):
        store.write_sync(queue.complete, Lease(child, 2), "too late")


def test_a_worker_epoch_declared_dead_claims_nothing(store: Store) -> None:
    """The worker's claim checks its epoch inside the claim statement: a dead epoch is
    leased nothing (the queue is left as it was) and is told so (None); a live one claims."""
    from harness.steps import claim

    dead = store.write_sync(workers.register_worker, 1)
    live = store.write_sync(workers.register_worker, 1)
    store.write_sync(workers.mark_stopped, [dead])
    tid = _run(store)
    assert store.write_sync(queue.claim, dead, 60, live=True) == []
    assert store.write_sync(claim, dead, 60) is None
    assert _status(store, tid) == TaskStatus.QUEUED
    [(task, state)] = store.write_sync(claim, live, 60) or []
    owner = select(tasks.c.lease_owner).where(tasks.c.id == tid)
    assert (task.id, state.transcript) == (tid, [])
    assert store.read_sync(lambda c: c.execute(owner).scalar_one()) == live
    assert store.write_sync(claim, live, 60) == []  # alive, with nothing left to claim


def test_the_workers_claim_is_one_statement_when_it_claims(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch check and the lease clock (the database's on PostgreSQL) are read by the
    claim statement itself: a claim that leases tasks costs one statement, no more (counted
    at the driver: sqlite3's trace callback, psycopg's cursor)."""
    from harness.steps import claim
    from harness.store.engine import driver, is_postgres

    me = store.write_sync(workers.register_worker, 2)
    _run(store)
    _run(store)
    sent: list[str] = []

    def note(statement: str) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT")):
            sent.append(statement)

    if is_postgres(store.engine):
        import psycopg

        execute = psycopg.Cursor.execute

        def counted(cursor: Any, query: Any, *args: Any, **kw: Any) -> Any:
            note(query.decode() if isinstance(query, bytes) else str(query))
            return execute(cursor, query, *args, **kw)

        monkeypatch.setattr(psycopg.Cursor, "execute", counted)

    def claim_counted(conn: Any) -> Any:
        if not is_postgres(conn):
            driver(conn).set_trace_callback(note)
        try:
            return claim(conn, me, 60, 2)
        finally:
            if not is_postgres(conn):
                driver(conn).set_trace_callback(None)

    assert len(store.write_sync(claim_counted) or []) == 2
    assert len(sent) == 1, sent


@pytest.mark.parametrize("first", ["run", "batch", "core", "engine.begin"])
def test_a_write_that_fails_leaves_nothing_whatever_its_first_statement(
    store: Store, first: str
) -> None:
    """harness begins its transactions itself (on PostgreSQL the BEGIN goes with the first
    statement, whichever path sends it): a write that fails after its statements ran is
    rolled back whole."""
    from harness.store.engine import batch, run

    tid = _run(store)
    moved = update(tasks).where(tasks.c.id == tid).values(priority=tasks.c.priority + 1)

    def fail_after_writing(conn: Any) -> None:
        if first == "run":
            run(conn, moved)
        elif first == "batch":
            with batch(conn) as sent:
                sent.run(moved)
        else:
            conn.execute(moved)
        run(conn, moved)
        raise RuntimeError("after the writes")

    with pytest.raises(RuntimeError, match="after the writes"):
        if first == "engine.begin":
            with store.engine.begin() as conn:
                fail_after_writing(conn)
        else:
            store.write_sync(fail_after_writing)
    priority = select(tasks.c.priority).where(tasks.c.id == tid)
    assert store.read_sync(lambda c: c.execute(priority).scalar_one()) == 0
    store.write_sync(lambda c: run(c, moved))  # and the next write commits
    assert store.read_sync(lambda c: c.execute(priority).scalar_one()) == 1


def test_dead_worker_on_this_host_is_detected_at_once(store: Store) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)
    wid = store.write_sync(workers.register_worker, 1)
    store.write_sync(
        lambda c: c.execute(
            update(workers_table).where(workers_table.c.id == wid).values(pid=dead_pid)
        )
    )
    me = store.write_sync(workers.register_worker, 1)
    tid = _run(store)
    store.write_sync(queue.claim, wid, 3600)
    dead = store.read_sync(workers.dead_workers, 3600)
    assert wid in dead and me not in dead
    assert store.write_sync(queue.reap_expired, dead) == 1
    assert _status(store, tid) == TaskStatus.QUEUED


def test_concurrent_threads_never_claim_a_task_twice(store: Store) -> None:
    n = 120
    store.write_sync(
        lambda c: [queue.create_run(c, f"g{i}", "a", max_attempts=3) for i in range(n)]
    )
    seen: list[int] = []
    lock = threading.Lock()

    def claimer(worker_id: int) -> None:
        while True:
            got = store.write_sync(queue.claim, worker_id, 60, 3)
            if not got:
                return
            for t in got:
                store.write_sync(queue.complete, Lease(t, worker_id), "ok")
            with lock:
                seen.extend(t.id for t in got)

    threads = [threading.Thread(target=claimer, args=(w,)) for w in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == n and len(set(seen)) == n


def _claim_in_process(url: str, worker_id: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = Store.open(url, migrate=False)
    got: list[int] = []
    while True:
        batch = s.write_sync(queue.claim, worker_id, 60, 2)
        if not batch:
            break
        for t in batch:
            s.write_sync(queue.complete, Lease(t, worker_id), "ok")
        got.extend(t.id for t in batch)
    s.close()
    out.put(got)


def test_concurrent_processes_never_claim_a_task_twice(store: Store, db_url: str) -> None:
    n = 150
    store.write_sync(
        lambda c: [queue.create_run(c, f"g{i}", "a", max_attempts=3) for i in range(n)]
    )
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_claim_in_process, args=(db_url, 100 + i, results)) for i in range(4)
    ]
    for p in procs:
        p.start()
    claimed = [tid for _ in procs for tid in results.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert len(claimed) == n and len(set(claimed)) == n
    done = store.read_sync(
        lambda c: c.execute(select(tasks.c.id).where(tasks.c.status == "done")).all()
    )
    assert len(done) == n
    assert os.getpid()  # the parent process is untouched


@pytest.mark.postgres
@pytest.mark.anyio
async def test_database_threads_bound_the_transactions_run_at_once(pg_url: str) -> None:
    """``database_threads`` transactions at once (the rest wait their turn, on the event loop),
    and maintenance's long transactions in a lane of their own: one waiting in it holds up no
    step's transaction."""
    import anyio

    store = Store.open(pg_url, threads=2)
    lock, now, most = threading.Lock(), [0], [0]

    def step(conn: Any) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1

    released = threading.Event()

    def long_duty(conn: Any) -> bool:
        return released.wait(30)  # until a step's transaction ran meanwhile

    def step_then_release(conn: Any) -> None:
        step(conn)
        released.set()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(store.write, step)
        assert most[0] == 2  # eight wanted to, two ran at once

        async with anyio.create_task_group() as tg:
            outcome: list[bool] = []

            async def duty() -> None:
                outcome.append(await store.write_in_thread(long_duty))

            tg.start_soon(duty)
            await anyio.sleep(0.05)
            await store.write(step_then_release)
        assert outcome == [True]
    finally:
        store.close()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_cancelled_caller_waits_for_its_running_transaction_and_starts_none(
    pg_url: str,
) -> None:
    """A transaction in a thread is never abandoned halfway (its COMMIT's outcome would be
    unknown): a caller cancelled meanwhile waits for its end. One cancelled before it was
    handed to a thread starts nothing. What a transaction sets in the caller's context is
    seen in the thread (``RETRYING``)."""
    import anyio

    from harness.store.access import RETRYING

    store = Store.open(pg_url, threads=1)
    ended: list[bool] = []

    def slow(conn: Any) -> None:
        time.sleep(0.3)
        conn.exec_driver_sql("SELECT 1")
        ended.append(RETRYING.get())

    try:
        token = RETRYING.set(True)
        t0 = time.monotonic()
        with anyio.move_on_after(0.05) as scope:
            await store.write(slow)
        RETRYING.reset(token)
        assert scope.cancel_called and ended == [True]  # waited for, in the caller's context
        assert time.monotonic() - t0 >= 0.3

        ran: list[int] = []
        with anyio.CancelScope() as cancelled:
            cancelled.cancel()
            await store.write(lambda conn: ran.append(1))
        assert cancelled.cancelled_caught and ran == []
    finally:
        store.close()


def test_database_threads_is_a_checked_setting(tmp_path: Any) -> None:
    from harness.errors import ConfigError
    from harness.settings import load_settings

    assert load_settings(tmp_path, {}).database_threads == 2
    assert load_settings(tmp_path, {"HARNESS_DATABASE_THREADS": "8"}).database_threads == 8
    with pytest.raises(ConfigError, match="database_threads"):
        load_settings(tmp_path, {"HARNESS_DATABASE_THREADS": "0"})
