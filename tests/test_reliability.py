"""The failure paths that used to lose answers, pay twice or stall a night (one test each).

Database faults are injected into the real store: its ``write`` raises the errors a
PostgreSQL restart or a SQLite lock past its timeout raise, for chosen transactions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from sqlalchemy import func, select

from harness import ledger, loop, steps
from harness.errors import LeaseLost
from harness.ledger import CallContext
from harness.settings import Settings, WorkerConfig
from harness.store import Store, queue, workers
from harness.store.queue import Lease
from harness.store.schema import TaskStatus, calls, messages, reservations, tasks, usage_daily
from harness.testing import ScriptedProvider, chat_completion
from harness.usage import Budget, CallOutcome, CallRecord, Usage
from harness.worker import Worker
from tests.helpers import maintain, runtime, set_front_matter, submit, work


def blip(store: Store, fn: Callable[..., Any], times: int) -> list[int]:
    """Make ``store.write`` of ``fn`` fail ``times`` times as a dropped database would;
    returns a list that counts the failures injected."""
    real = store.write
    failed: list[int] = []

    async def write(f: Any, *args: Any, **kwargs: Any) -> Any:
        if f is fn and len(failed) < times:
            failed.append(1)
            raise sqlite3.OperationalError("database is locked")
        return await real(f, *args, **kwargs)

    store.write = write  # type: ignore[method-assign,assignment]
    return failed


def _used(store: Store, agent: str) -> int:
    u = usage_daily.c
    stmt = select(u.prompt_tokens + u.completion_tokens).where(u.agent == agent)
    return int(store.read_sync(lambda c: c.execute(stmt).scalar()) or 0)


def _count(store: Store, table: Any, *where: Any) -> int:
    stmt = select(func.count()).select_from(table).where(*where)
    return int(store.read_sync(lambda c: c.execute(stmt).scalar()) or 0)


def _status(store: Store, task_id: int) -> TaskStatus:
    task = store.read_sync(queue.get_task, task_id)
    assert task is not None
    return task.status


# -- 1. a database error in a failure path: the worker lives, the answer is kept ----------------


@pytest.mark.anyio
async def test_a_database_blip_while_failing_a_task_does_not_kill_the_worker(
    workspace_dir: Path,
) -> None:
    rt, _ = runtime(
        workspace_dir,
        [ScriptedProvider.error(400, "bad request", retryable=False), ScriptedProvider.text("ok")],
    )
    failed = blip(rt.store, queue.fail, 3)
    _, broken = await submit(rt, "first", "veblen")
    _, fine = await submit(rt, "second", "veblen")
    await work(rt, concurrency=1)  # returns: the worker did not die
    assert len(failed) == 3  # ...and the failing write was tried again until it went through
    assert _status(rt.store, broken) == TaskStatus.FAILED
    assert _status(rt.store, fine) == TaskStatus.DONE
    await rt.aclose()


@pytest.mark.anyio
async def test_an_answer_is_stored_after_database_blips_and_never_sent_twice(
    workspace_dir: Path,
) -> None:
    rt, provider = runtime(workspace_dir, [ScriptedProvider.text("the answer")])
    failed = blip(rt.store, steps._persist_step_tx, 4)
    _, task_id = await submit(rt, "question", "veblen")
    await work(rt)
    assert len(failed) == 4 and len(provider.requests) == 1  # kept and written, not re-sent
    task = rt.store.read_sync(queue.get_task, task_id)
    assert task is not None and task.status == TaskStatus.DONE and task.result == "the answer"
    assert _count(rt.store, calls, calls.c.outcome == "ok") == 1
    assert _count(rt.store, calls, calls.c.outcome == "unsettled") == 0
    await rt.aclose()


def lost_acks(store: Store, fns: tuple[Callable[..., Any], ...]) -> list[str]:
    """Make the first write of each of ``fns`` commit, then fail as a connection dropped at
    COMMIT does (the outcome unknown to the caller)."""
    real = store.write
    lost: list[str] = []

    async def write(f: Any, *args: Any, **kwargs: Any) -> Any:
        result = await real(f, *args, **kwargs)
        if f in fns and f.__name__ not in lost:
            lost.append(f.__name__)
            raise sqlite3.OperationalError("database is locked")  # committed all the same
        return result

    store.write = write  # type: ignore[method-assign,assignment]
    return lost


@pytest.mark.anyio
async def test_a_write_retried_after_an_unknown_commit_applies_once(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[note_read]")
    rt, provider = runtime(
        workspace_dir, [ScriptedProvider.tool_call("note_read", {}), ScriptedProvider.text("done")]
    )
    fns = (steps._next_attempt_tx, steps._persist_step_tx, steps._append_tx)
    lost = lost_acks(rt.store, fns)
    _, task_id = await submit(rt, "question", "veblen")
    await work(rt)
    assert sorted(lost) == sorted(f.__name__ for f in fns)  # each was retried once
    task = rt.store.read_sync(queue.get_task, task_id)
    assert task is not None and task.status == TaskStatus.DONE and task.result == "done"
    assert len(provider.requests) == 2
    assert _count(rt.store, calls, calls.c.outcome == "ok") == 2  # each answer once
    assert _count(rt.store, reservations) == 0  # no second reservation left behind
    roles = [m.message.role for m in rt.store.read_sync(steps.load_transcript, task_id)]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert _used(rt.store, "veblen") == sum(
        r.usage.total_tokens for c in provider.completions for r in c.records
    )
    await rt.aclose()


@pytest.mark.anyio
async def test_a_bug_in_the_failure_path_is_logged_and_the_worker_goes_on(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _ = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok"))
    _, first = await submit(rt, "first", "veblen")
    real_run = loop.TaskRunner.run
    calls_made = []

    async def crashing_run(self: loop.TaskRunner) -> TaskStatus:
        calls_made.append(self.task.id)
        if self.task.id == first:
            raise RuntimeError("a bug in the loop")
        return await real_run(self)

    monkeypatch.setattr(loop.TaskRunner, "run", crashing_run)
    real_fail = queue.fail

    def failing_fail(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("and a bug in the failure path")

    monkeypatch.setattr(queue, "fail", failing_fail)
    w = Worker(rt, 1, until_idle=False, handle_signals=False)
    _, second = await submit(rt, "second", "veblen")
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        with anyio.fail_after(10):
            while _status(rt.store, second) != TaskStatus.DONE:
                await anyio.sleep(0.02)
        w.stop()
    monkeypatch.setattr(queue, "fail", real_fail)
    assert first in calls_made and second in calls_made
    await rt.aclose()


# -- 2. maintenance and live steps take ledger rows in one order: no deadlock on PostgreSQL ------


@pytest.mark.postgres
def test_orphan_settling_and_live_steps_never_deadlock(pg_url: str) -> None:
    settings = Settings.model_validate(
        {
            "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
            "models": {"m": {"provider": "p", "id": "m", "price_input": 1.0}},
            "default_model": "m",
        }
    )
    store = Store.open(pg_url)
    agents = [f"agent{i}" for i in range(4)]
    run_ids = [store.write_sync(queue.create_run, "g", a, max_attempts=3)[0] for a in agents]
    day = ledger.day_of(time.time(), settings.tz)
    budget = Budget(tokens=10**12)
    errors: list[BaseException] = []
    rounds = 250

    def reserve(agent: str, run_id: int, worker_id: int) -> int:
        rid, _ = store.write_sync(
            ledger.reserve,
            CallContext(agent, run_id, None, worker_id),
            settings,
            model="m",
            prompt_tokens=10,
            max_tokens=10,
            min_tokens=10,
            budget=budget,
            workspace_budget=budget,
            day=day,
        )
        return rid

    def live(seed: int) -> None:
        ok = CallRecord("p", "m", CallOutcome.OK, Usage(5, 5))
        try:
            for i in range(rounds):
                agent = agents[(i + seed) % len(agents)]
                run_id = run_ids[(i * 3 + seed) % len(run_ids)]
                rid = reserve(agent, run_id, 1)
                ctx = CallContext(agent, run_id, None, 1)
                store.write_sync(ledger.record, ctx, [ok], settings, reservation_id=rid)
        except BaseException as exc:
            errors.append(exc)

    def maintenance() -> None:
        try:
            for i in range(rounds):
                for k, agent in enumerate(agents):  # a dead worker's calls in flight
                    reserve(agent, run_ids[(i + k) % len(run_ids)], 666)
                store.write_sync(ledger.settle_orphans, settings, [666])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=live, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=maintenance))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert errors == []


# -- 3. each maintenance duty in its own transaction ------------------------------------------


def test_one_failing_duty_does_not_stop_the_others(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import report

    config = workspace_dir / "config/harness.toml"
    config.write_text(
        config.read_text()
        + '\n[[schedules]]\nname = "a-report"\ncron = "* * * * *"\nreport = "r/%H%M.md"\n'
        + '\n[[schedules]]\nname = "b-run"\ncron = "* * * * *"\ngoal = "Tick."\n'
    )

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("a report that raises something else than OSError")

    monkeypatch.setattr(report, "build_report", broken)

    def wake_fails(conn: Any) -> int:
        raise RuntimeError("one bad row")

    monkeypatch.setattr(queue, "wake_waiting", wake_fails)
    rt, _ = runtime(workspace_dir, [])
    try:
        _, task_id = rt.store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
        rt.store.write_sync(queue.claim, 999, 0.01)  # a worker that then went away
        time.sleep(0.05)
        maintain(rt, 1)
        assert _status(rt.store, task_id) == TaskStatus.QUEUED  # reaped all the same
    finally:
        rt.store.close()


def test_a_schedule_name_longer_than_its_column_is_a_config_error(workspace_dir: Path) -> None:
    from harness.errors import ConfigError
    from harness.settings import load_settings

    config = workspace_dir / "config/harness.toml"
    name = "n" * 129
    config.write_text(
        config.read_text() + f'\n[[schedules]]\nname = "{name}"\ncron = "* * * * *"\ngoal = "g"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(workspace_dir)
    assert any(p.field == "schedules.0.name" for p in info.value.problems)


# -- 5. budget held by calls in flight is not budget spent; the last of a budget is used --------


@pytest.mark.anyio
async def test_reservations_in_flight_make_tasks_wait_not_pause(workspace_dir: Path) -> None:
    """Twelve slots, each call reserving its worst case: many are refused at first because
    the room is held by calls in flight. They wait and go on; none pauses for the day while
    the budget is not spent, and the budget is nearly all used, never passed."""
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "8000")
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok", delay_s=0.05))
    runs = [(await submit(rt, f"question {i}", "veblen"))[0] for i in range(30)]
    await work(rt, concurrency=12)
    used = _used(rt.store, "veblen")
    per_call = used / len(provider.requests)
    statuses = [rt.store.read_sync(_root_status, r) for r in runs]
    assert used <= 8000
    if "paused" in statuses:  # only once the budget could not take one more call
        assert used > 8000 - per_call - 200
    assert statuses.count("done") == len(provider.requests)
    await rt.aclose()


def _root_status(conn: Any, run_id: int) -> str:
    stmt = select(tasks.c.status).where(tasks.c.run_id == run_id, tasks.c.parent_id.is_(None))
    return str(conn.execute(stmt).scalar())


@pytest.mark.anyio
async def test_the_end_of_a_budget_is_used_with_a_shrunk_max_tokens(workspace_dir: Path) -> None:
    """An agent with a small budget used to stop at about half of it: each call reserved its
    whole max_tokens. Now the last calls get the room left."""
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "3000")
    set_front_matter(workspace_dir / "agents/veblen.md", "max_tokens", "384")
    words = " ".join(["word"] * 600)  # a long answer: capped by whatever max_tokens is sent
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text(words))
    for i in range(20):
        await submit(rt, f"q{i}", "veblen")
    await work(rt, concurrency=1)
    used = _used(rt.store, "veblen")
    assert 3000 * 0.9 <= used <= 3000
    asked = [r.max_tokens for r in provider.requests]
    assert asked[0] == 384
    await rt.aclose()


# -- 6. a blocking tool cannot hold a task past its wall-clock limit -----------------------------


@pytest.mark.anyio
async def test_a_blocking_tool_is_abandoned_at_the_tasks_time_limit(workspace_dir: Path) -> None:
    (workspace_dir / "tools/slow.py").write_text(
        "import time\nfrom harness import tool\n\n\n@tool\ndef nap() -> str:\n"
        '    """Sleep a long while."""\n    time.sleep(30)\n    return "awake"\n'
    )
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[nap]")
    set_front_matter(workspace_dir / "agents/veblen.md", "timeout_s", "1.5")
    rt, _ = runtime(workspace_dir, [ScriptedProvider.tool_call("nap", {})])
    _, task_id = await submit(rt, "rest", "veblen")
    started = time.monotonic()
    await work(rt)
    assert time.monotonic() - started < 10  # the limit held: the 30 s nap was abandoned
    task = rt.store.read_sync(queue.get_task, task_id)
    assert task is not None and task.status == TaskStatus.FAILED
    assert "wall-clock limit" in (task.error or "")
    await rt.aclose()


# -- 7. every write is fenced by the claim, the reservation included ----------------------------


def test_a_stale_claim_of_the_same_worker_cannot_write_or_reserve(store: Store) -> None:
    settings = Settings()
    store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
    [old] = store.write_sync(queue.claim, 7, 0.01)
    time.sleep(0.05)
    assert store.write_sync(queue.reap_expired) == 1
    [new] = store.write_sync(queue.claim, 7, 60)  # the same worker claims it again
    assert new.id == old.id and new.claims == old.claims + 1
    assert not store.write_sync(queue.touch, Lease(old, 7))
    with pytest.raises(LeaseLost):
        store.write_sync(queue.complete, Lease(old, 7), "from the stale runner")
    from harness.agents import AgentSpec

    agent = AgentSpec(name="veblen", description="d", prompt="p")
    held = steps.Reservation(store, settings, Lease(old, 7), agent)
    with pytest.raises(LeaseLost):
        anyio.run(_before, held)
    assert _count(store, reservations) == 0  # nothing reserved: no paid call can follow
    store.write_sync(queue.complete, Lease(new, 7), "from the live runner")


async def _before(held: steps.Reservation) -> int:
    return await held.before("local", [], prompt_tokens=10, max_tokens=10)


def test_an_answer_that_comes_back_after_its_lease_was_lost_is_paid_for_but_not_kept(
    store: Store,
) -> None:
    """The answer's ledger row and the task's move go to the server together: the row is
    written (the call was paid for), the reservation settled, and nothing else: the task
    stays with its new claim, no message is kept, LeaseLost is raised."""
    from harness.agents import AgentSpec
    from harness.messages import ChatMessage

    store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
    [old] = store.write_sync(queue.claim, 7, 0.5)
    agent = AgentSpec(name="veblen", description="d", prompt="p")
    held = steps.Reservation(store, Settings(), Lease(old, 7), agent)
    anyio.run(_before, held)  # reserved while the lease held
    time.sleep(0.6)
    assert store.write_sync(queue.reap_expired) == 1
    [new] = store.write_sync(queue.claim, 7, 60)
    record = CallRecord(
        "local", "local", CallOutcome.OK, Usage(prompt_tokens=10, completion_tokens=4)
    )
    answer = ChatMessage(role="assistant", content="too late")

    async def persist() -> None:
        await steps.persist_step(held, [record], answer, 0)

    with pytest.raises(LeaseLost):
        anyio.run(persist)
    assert _count(store, calls) == 1 and _count(store, reservations) == 0
    task = store.read_sync(queue.get_task, new.id)
    assert task is not None and task.status == TaskStatus.RUNNING and task.result is None
    assert (
        store.read_sync(lambda c: c.execute(select(func.count()).select_from(messages)).scalar())
        == 0
    )
    [day] = store.read_sync(
        lambda c: c.execute(select(usage_daily).where(usage_daily.c.agent == "veblen")).all()
    )
    assert (day.calls, day.reserved_tokens) == (1, 0)


# -- 8. a call that never left releases its reservation ------------------------------------------


@pytest.mark.anyio
async def test_a_call_cancelled_while_paced_leaves_no_unsettled_row(workspace_dir: Path) -> None:
    from harness.provider import OpenAIProvider

    rt, _ = runtime(workspace_dir, [])
    router = respx.Router(assert_all_called=False)
    route = router.post(url__regex=r".*/chat/completions")
    route.mock(side_effect=[httpx.Response(429, headers={"Retry-After": "60"}), _ok()])
    rt.provider = OpenAIProvider(
        rt.settings, transport_factory=lambda n, c: httpx.MockTransport(router.async_handler)
    )
    await submit(rt, "question", "veblen")
    wid = await rt.store.write(workers.register_worker, 1)
    [task] = await rt.store.write(queue.claim, wid, 60)
    with anyio.move_on_after(1.0):  # the retry waits 60 s for the provider's pause
        await loop.TaskRunner(rt, task, wid).run()
    assert route.call_count == 1
    assert _count(rt.store, calls, calls.c.outcome == "unsettled") == 0
    assert _count(rt.store, calls, calls.c.outcome == "error") == 1  # the 429 did reach it
    assert _count(rt.store, reservations) == 0
    await rt.aclose()


def _ok() -> httpx.Response:
    return httpx.Response(200, json=chat_completion('{"answer": "ok"}'))


# -- 9. liveness by PID only where PIDs mean the same -------------------------------------------


def test_a_dead_pid_in_another_pid_namespace_is_not_a_dead_worker() -> None:
    mine = workers.node()
    assert mine is not None
    boot, namespace, _start = mine.split(":")
    gone_pid = 2**22 - 3  # no such process here
    elsewhere = f"{boot}:{int(namespace) + 1}:12345"  # same host name, another container
    assert not workers._process_gone("same-host", gone_pid, elsewhere, mine)
    here_but_reused = f"{boot}:{namespace}:1"  # this namespace, but not the process recorded
    assert workers._process_gone("same-host", os.getpid(), here_but_reused, mine)
    assert not workers._process_gone("same-host", os.getpid(), mine, mine)


# -- 10. retry backoff is capped, with jitter ---------------------------------------------------


def test_task_retry_backoff_is_capped_and_jittered() -> None:
    cfg = WorkerConfig(retry_backoff_s=30, retry_backoff_max_s=600)
    late = [loop.retry_backoff(cfg, 20) for _ in range(50)]
    assert all(300 <= d <= 600 for d in late) and len(set(late)) > 1
    assert 15 <= loop.retry_backoff(cfg, 1) <= 30


# -- 11. leases are measured on the database's clock on PostgreSQL ------------------------------


@pytest.mark.postgres
def test_a_worker_whose_clock_is_behind_does_not_lose_its_leases(pg_url: str) -> None:
    from harness import clock

    store = Store.open(pg_url)
    store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
    clock.use(lambda: time.time() - 3600)  # this machine's clock is an hour behind
    try:
        [task] = store.write_sync(queue.claim, 1, 60)
    finally:
        clock.use(None)
    assert store.write_sync(queue.reap_expired) == 0  # another machine does not reap it
    clock.use(lambda: time.time() - 3600)
    try:
        assert store.write_sync(queue.heartbeat, 1, [task.id], 60) == {task.id}
    finally:
        clock.use(None)
    assert store.write_sync(queue.reap_expired) == 0  # nor after a heartbeat from it
    assert store.write_sync(queue.touch, Lease(task, 1))
    store.close()


# -- 12. the SQLite WAL stays bounded -----------------------------------------------------------


@pytest.mark.anyio
async def test_the_wal_is_truncated_once_past_its_limit(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.store import access, notes

    monkeypatch.setattr(access, "WAL_LIMIT_BYTES", 256 * 1024)
    monkeypatch.setattr(access, "CHECKPOINT_EVERY", 50)
    store = Store.open(sqlite_url)
    reader = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM notes").fetchone()  # an old snapshot: PASSIVE stalls
    text = "x" * 4000
    for _ in range(300):
        await store.write(notes.add_note, "veblen", text)
    grown = store.wal_bytes()
    reader.execute("COMMIT")
    reader.close()
    for _ in range(60):
        await store.write(notes.add_note, "veblen", text)
    assert grown > 256 * 1024 and store.wal_bytes() <= 256 * 1024
    store.close()
