"""The worker: survives task crashes, drains on SIGTERM, hands work over when a worker dies.

Process tests run ``harness worker`` (the console script) on a temp workspace against a fake
server subprocess (see ``tests/processes.py``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from harness import ledger
from harness.settings import load_workspace
from harness.store import Store, queue, workers
from harness.store.schema import TaskStatus, calls, messages, reservations, tasks, usage_daily
from harness.testing import ScriptedProvider
from harness.usage import Budget, CallOutcome
from harness.worker import Worker
from tests.helpers import runtime, submit, work
from tests.processes import Procs, enqueue, open_store, wait_for

# -- helpers ------------------------------------------------------------------------------------


def get_task(st: Store, task_id: int) -> queue.Task:
    task = st.read_sync(queue.get_task, task_id)
    assert task is not None
    return task


def count(st: Store, table: Any, *where: Any) -> int:
    return int(
        st.read_sync(
            lambda c: c.execute(select(func.count()).select_from(table).where(*where)).scalar() or 0
        )
    )


def assistant_messages(st: Store, task_id: int) -> int:
    return count(st, messages, messages.c.task_id == task_id, messages.c.role == "assistant")


def reserved_tokens(st: Store) -> int:
    total = st.read_sync(
        lambda c: c.execute(select(func.sum(usage_daily.c.reserved_tokens))).scalar()
    )
    return int(total or 0)


# -- in-process -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_worker_survives_a_task_raising_an_unexpected_exception(
    workspace_dir: Path,
) -> None:
    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace("retry_backoff_s = 30", "retry_backoff_s = 0"))
    crashes = 0

    def script(request: Any) -> Any:
        nonlocal crashes
        if "R. Veblen" in (request.messages[0].content or "") and crashes == 0:
            crashes += 1
            raise RuntimeError("a bug in some tool or provider")
        return ScriptedProvider.text("fine")

    rt, _ = runtime(workspace_dir, script)
    _, crashing = await submit(rt, "a", "veblen")
    _, other = await submit(rt, "b", "simmons")
    await work(rt, concurrency=2)
    first = await rt.store.read(queue.get_task, crashing)
    second = await rt.store.read(queue.get_task, other)
    assert first is not None and second is not None
    assert (first.status, first.attempts, first.result) == (TaskStatus.DONE, 2, "fine")
    assert (second.status, second.attempts) == (TaskStatus.DONE, 1)
    assert crashes == 1
    # the crashed call may have reached a server: it shows as unsettled, its reservation gone
    assert count(rt.store, reservations) == 0 and reserved_tokens(rt.store) == 0
    outcomes = rt.store.read_sync(lambda c: c.execute(select(calls.c.outcome)).scalars().all())
    assert sorted(outcomes) == ["ok", "ok", "unsettled"]
    await rt.aclose()


# -- graceful shutdown ------------------------------------------------------------------------


def test_sigterm_releases_running_tasks_when_the_grace_runs_out(
    procs: Procs, workspace_dir: Path
) -> None:
    fake = procs.fake("--ttft-s", "60")  # answers never come in time
    st = open_store(workspace_dir)
    ids = [enqueue(st, f"question {i}", "veblen") for i in range(3)]
    w = procs.worker(workspace_dir, fake, "-c", "2", worker__grace_s=0.5)
    wait_for(lambda: fake.stats()["in_flight"] == 2, what="two calls in flight")
    t0 = time.monotonic()
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 5
    tasks = [get_task(st, i) for i in ids]
    assert [t.status for t in tasks] == [TaskStatus.QUEUED] * 3
    assert [t.attempts for t in tasks] == [0, 0, 0]  # released: no attempt charged
    assert sorted(str(t.status_reason) for t in tasks) == [
        "None",  # never claimed
        "worker shutting down",
        "worker shutting down",
    ]
    assert count(st, reservations) == 0 and reserved_tokens(st) == 0
    # the two cancelled calls had reached the server: charged with their estimate, flagged
    outcomes = st.read_sync(lambda c: c.execute(select(calls.c.outcome)).scalars().all())
    assert outcomes == ["unsettled", "unsettled"]
    names = [e["event"] for e in procs.events(w)]
    assert names.count("task_released") == 2 and "worker_stopped" in names
    st.close()


def test_sigterm_lets_running_tasks_finish_within_the_grace_and_claims_no_more(
    procs: Procs, workspace_dir: Path
) -> None:
    fake = procs.fake("--ttft-s", "1.5")
    st = open_store(workspace_dir)
    ids = [enqueue(st, f"question {i}", "veblen") for i in range(3)]
    w = procs.worker(workspace_dir, fake, "-c", "2", worker__grace_s=20)
    wait_for(lambda: fake.stats()["in_flight"] == 2, what="two calls in flight")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=15) == 0
    tasks = [get_task(st, i) for i in ids]
    assert sorted(t.status for t in tasks) == [TaskStatus.DONE, TaskStatus.DONE, TaskStatus.QUEUED]
    left = next(t for t in tasks if t.status == TaskStatus.QUEUED)
    assert left.attempts == 0 and fake.stats()["received"] == 2
    st.close()


def test_a_second_sigterm_exits_at_once_and_the_task_is_taken_back(
    procs: Procs, workspace_dir: Path
) -> None:
    fake = procs.fake("--ttft-s", "60")
    st = open_store(workspace_dir)
    task_id = enqueue(st, "question", "veblen")
    w = procs.worker(workspace_dir, fake, "-c", "1", worker__grace_s=60)
    wait_for(lambda: fake.stats()["in_flight"] == 1, what="the call in flight")
    w.send_signal(signal.SIGTERM)
    wait_for(lambda: any(e["event"] == "worker_stopping" for e in procs.events(w)))
    t0 = time.monotonic()
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=5) == 130
    assert time.monotonic() - t0 < 2
    assert get_task(st, task_id).status == TaskStatus.RUNNING  # the dead worker's lease
    fake.reset(ttft_s=0)
    again = procs.worker(workspace_dir, fake, "--until-idle", worker__lease_s=60)
    assert again.wait(timeout=30) == 0
    task = get_task(st, task_id)
    assert task.status == TaskStatus.DONE and assistant_messages(st, task_id) == 1
    # the call in flight when the worker died is in the ledger, as unsettled
    assert count(st, calls, calls.c.outcome == CallOutcome.UNSETTLED) == 1
    st.close()


# -- lease takeover ---------------------------------------------------------------------------


def test_a_killed_workers_task_is_taken_over_at_once(procs: Procs, workspace_dir: Path) -> None:
    fake = procs.fake("--ttft-s", "60")
    st = open_store(workspace_dir)
    task_id = enqueue(st, "question", "veblen")
    a = procs.worker(workspace_dir, fake, "-c", "1", worker__lease_s=300)
    wait_for(lambda: fake.stats()["in_flight"] == 1, what="the call in flight")
    a.kill()
    a.wait()  # reaped: a zombie would still look alive to kill(pid, 0)
    fake.reset(ttft_s=0)
    t0 = time.monotonic()
    b = procs.worker(workspace_dir, fake, "-c", "1", worker__lease_s=300)
    wait_for(lambda: get_task(st, task_id).status == TaskStatus.DONE, 30, "the takeover")
    assert time.monotonic() - t0 < 30  # well before the 300 s lease would expire
    task = get_task(st, task_id)
    assert task.attempts == 2 and assistant_messages(st, task_id) == 1
    outcomes = st.read_sync(lambda c: sorted(c.execute(select(calls.c.outcome)).scalars()))
    assert outcomes == [CallOutcome.OK, CallOutcome.UNSETTLED]
    b.send_signal(signal.SIGTERM)
    assert b.wait(timeout=15) == 0
    st.close()


def test_a_stopped_workers_task_is_taken_over_when_its_lease_expires(
    procs: Procs, workspace_dir: Path
) -> None:
    fake = procs.fake("--ttft-s", "2")
    st = open_store(workspace_dir)
    task_id = enqueue(st, "question", "veblen")
    a = procs.worker(workspace_dir, fake, "-c", "1", worker__lease_s=1)
    wait_for(lambda: fake.stats()["in_flight"] == 1, what="the call in flight")
    a.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    b = procs.worker(workspace_dir, fake, "-c", "1", "--until-idle", worker__lease_s=1)
    assert b.wait(timeout=40) == 0
    took = time.monotonic() - t0
    task = get_task(st, task_id)
    assert task.status == TaskStatus.DONE and task.attempts == 2
    assert took > 1  # not before the lease ran out
    a.send_signal(signal.SIGCONT)  # its answer arrives late: it must not be used
    time.sleep(1.5)
    assert assistant_messages(st, task_id) == 1
    assert get_task(st, task_id).status == TaskStatus.DONE
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=15) == 0
    st.close()


def test_until_idle_exits_when_nothing_is_runnable(procs: Procs, workspace_dir: Path) -> None:
    fake = procs.fake()
    st = open_store(workspace_dir)
    w = procs.worker(workspace_dir, fake, "--until-idle")
    assert w.wait(timeout=30) == 0  # an empty queue
    task_id = enqueue(st, "question", "veblen")
    w = procs.worker(workspace_dir, fake, "--until-idle")
    assert w.wait(timeout=30) == 0
    assert get_task(st, task_id).status == TaskStatus.DONE
    w = procs.worker(workspace_dir, fake, "--until-idle")
    assert w.wait(timeout=30) == 0  # only finished work left
    st.close()


# -- known bugs -------------------------------------------------------------------------------


def _reserve(st: Store, settings: Any, task_id: int, worker_id: int) -> int:
    """A budget reservation for one call of ``task_id``'s agent by ``worker_id``."""
    ctx = ledger.CallContext("veblen", 1, task_id, worker_id)
    day = ledger.day_of(time.time(), settings.tz)
    budget = Budget()
    rid, _ = st.write_sync(
        lambda c: ledger.reserve(
            c,
            ctx,
            settings,
            model="local",
            prompt_tokens=500,
            max_tokens=0,
            min_tokens=0,
            budget=budget,
            workspace_budget=budget,
            day=day,
        )
    )
    return rid


def test_a_late_answer_from_a_worker_declared_dead_is_charged_once(workspace_dir: Path) -> None:
    from harness.usage import CallRecord, Usage

    settings = load_workspace(workspace_dir).settings
    st = open_store(workspace_dir)
    task_id = enqueue(st, "question", "veblen")
    worker_id = st.write_sync(workers.register_worker, 1)
    rid = _reserve(st, settings, task_id, worker_id)
    # another worker's maintenance: the (SIGSTOPped) worker looks dead, its call unsettled
    st.write_sync(ledger.settle_orphans, settings, [worker_id])
    # the worker resumes; its answer arrives and the loop records it with its reservation
    ok = CallRecord(provider="local", model="local", outcome=CallOutcome.OK, usage=Usage(10, 5))
    ctx = ledger.CallContext("veblen", 1, task_id, worker_id)
    st.write_sync(ledger.record, ctx, [ok], settings, reservation_id=rid)
    assert count(st, calls) == 1  # the unsettled estimate was replaced by the answer


def test_a_stale_reservation_id_cannot_release_another_workers_reservation(
    workspace_dir: Path,
) -> None:
    settings = load_workspace(workspace_dir).settings
    st = open_store(workspace_dir)
    task_id = enqueue(st, "question", "veblen")
    a = st.write_sync(workers.register_worker, 1)
    b = st.write_sync(workers.register_worker, 1)
    rid_a = _reserve(st, settings, task_id, a)
    st.write_sync(ledger.settle_orphans, settings, [a])  # a looked dead (it was paused)
    rid_b = _reserve(st, settings, task_id, b)  # b took the task over; same id as a's
    # a resumes: its heartbeat finds the lease gone, the cancelled call gives back "its"
    # reservation (loop.TaskRunner._step, except BaseException)
    st.write_sync(ledger.release, rid_a)
    left = st.read_sync(lambda c: c.execute(select(reservations.c.id)).scalars().all())
    assert left == [rid_b]  # b's in-flight call keeps its reservation
    assert reserved_tokens(st) == 2 * 500  # b's row and the workspace's row


async def _wait_running(rt: Any, task_id: int) -> queue.Task:
    import anyio

    while True:
        task = await rt.store.read(queue.get_task, task_id)
        if task.status == TaskStatus.RUNNING:
            return task  # type: ignore[no-any-return]
        await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_worker_declared_dead_claims_nothing_under_its_dead_epoch(
    workspace_dir: Path,
) -> None:
    import anyio

    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace("lease_s = 60", "lease_s = 0.3"))
    rt, _ = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok", delay_s=0.6))
    _, first = await submit(rt, "first", "veblen")
    w = Worker(rt, 1, handle_signals=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        with anyio.fail_after(10):
            await _wait_running(rt, first)
            # another worker's maintenance declares this one dead (it was paused too long)
            await rt.store.write(workers.mark_stopped, [w.id])
            _, second = await submit(rt, "second", "veblen")
            await _wait_running(rt, second)
            owner = await rt.store.read(
                lambda c: c.execute(
                    select(tasks.c.lease_owner).where(tasks.c.id == second)
                ).scalar()
            )
            dead = await rt.store.read(workers.dead_workers, 0.6)
        w.stop()
    await rt.aclose()
    assert owner not in dead  # the worker took a fresh epoch before claiming again


@pytest.mark.anyio
async def test_a_late_heartbeat_does_not_make_a_worker_run_its_own_task_twice(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import worker as worker_module

    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace("lease_s = 60", "lease_s = 0.3"))
    monkeypatch.setattr(worker_module, "MAINTENANCE_EVERY_S", 0.05)

    def late_beat(conn: Connection, worker_id: int, ids: list[int], lease_s: float) -> set[int]:
        workers.beat_worker(conn, worker_id)  # alive, but its lease extensions land too late
        return set(ids)

    monkeypatch.setattr(worker_module, "_beat", late_beat)
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok", delay_s=1.0))
    _, task_id = await submit(rt, "question", "veblen")
    await work(rt, concurrency=2)
    task = await rt.store.read(queue.get_task, task_id)
    await rt.aclose()
    assert task is not None and task.status == TaskStatus.DONE
    assert len(provider.requests) == 1  # the worker never ran its own task twice
