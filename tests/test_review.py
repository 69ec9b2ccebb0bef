"""Review findings: each test demonstrates one bug and is expected to fail (xfail strict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from harness.loop import TaskRunner
from harness.messages import ChatRequest
from harness.provider import Completion
from harness.store import Store, queue, workers
from harness.store.schema import TaskStatus, calls, reservations, usage_daily
from harness.store.schema import workers as workers_table
from harness.testing import ScriptedProvider
from tests.helpers import runtime, submit, work


def _count(rt: Any, table: Any, *where: Any) -> int:
    return int(
        rt.store.read_sync(
            lambda c: c.execute(select(func.count()).select_from(table).where(*where)).scalar()
        )
    )


def _reserved(rt: Any) -> int:
    total = rt.store.read_sync(
        lambda c: c.execute(select(func.sum(usage_daily.c.reserved_tokens))).scalar()
    )
    return int(total or 0)


# -- 1. a cancellation that lands after the answer arrived loses it and leaks the reservation -----


@pytest.mark.anyio
async def test_cancel_right_after_the_answer_arrives_keeps_the_ledger_straight(
    workspace_dir: Path,
) -> None:
    scope = anyio.CancelScope()
    inner = ScriptedProvider([ScriptedProvider.text("the answer")])

    class CancelledOnArrival:
        """The answer arrives, and at that moment the worker cancels the runner (shutdown
        past the grace period, a lost lease noticed by the heartbeat, a cancelled run)."""

        async def complete(self, request: ChatRequest, **kw: Any) -> Completion:
            completion = await inner.complete(request, **kw)
            scope.cancel()  # delivered at the runner's next checkpoint
            return completion

        async def aclose(self) -> None:
            pass

    rt, _ = runtime(workspace_dir, inner)
    rt.provider = CancelledOnArrival()
    await submit(rt, "question", "veblen")
    wid = await rt.store.write(workers.register_worker, 1)
    [task] = await rt.store.write(queue.claim, wid, 60)
    with scope:
        await TaskRunner(rt, task, wid).run()
    held = _reserved(rt)
    left = _count(rt, reservations)
    recorded = _count(rt, calls)
    await rt.aclose()
    # the call was made and paid for: it must be in the ledger, and nothing stays reserved
    assert (left, held) == (0, 0)
    assert recorded == 1


# -- 2. a runner replaced by a re-claim of its own task releases the new claim --------------------


@pytest.mark.anyio
async def test_a_superseded_runner_does_not_release_its_successors_claim(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import Connection

    from harness import worker as worker_module

    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace("lease_s = 60", "lease_s = 0.3"))

    def late_beat(conn: Connection, worker_id: int, ids: list[int], lease_s: float) -> set[int]:
        workers.beat_worker(conn, worker_id)  # alive, but its lease extensions land too late
        return set(ids)

    monkeypatch.setattr(worker_module, "_beat", late_beat)
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok", delay_s=0.8))
    _, task_id = await submit(rt, "question", "veblen")

    async def other_workers_maintenance() -> None:
        # another machine's worker finds the lease expired and puts the task back in the queue
        while (await rt.store.read(queue.get_task, task_id)).status != TaskStatus.RUNNING:  # type: ignore[union-attr]
            await anyio.sleep(0.02)
        await anyio.sleep(0.4)
        assert await rt.store.write(queue.reap_expired) == 1

    with anyio.move_on_after(4):  # with the bug: claim, cancel, release, claim... forever
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_workers_maintenance)
            await work(rt, concurrency=2)
    task = await rt.store.read(queue.get_task, task_id)
    await rt.aclose()
    assert task is not None and task.status == TaskStatus.DONE, task
    # the first call was cut off by the re-claim; the second one must be the last
    assert len(provider.requests) == 2


# -- 3. a tool-call id reused by the server in a later step reuses an old child -------------------


@pytest.mark.anyio
async def test_a_reused_tool_call_id_in_a_later_step_delegates_again(workspace_dir: Path) -> None:
    from harness.store import views
    from tests.helpers import by_agent, set_front_matter

    arnold_file = workspace_dir / "agents/arnold.md"
    set_front_matter(arnold_file, "min_delegations", "0")
    set_front_matter(arnold_file, "delegation_rounds", "2")

    def arnold(request: ChatRequest) -> Any:
        results = [m for m in request.messages if m.role == "tool"]
        if len(results) == 0:
            return ScriptedProvider.tool_call(
                "delegate", {"agent": "veblen", "task": "books"}, id="call_0"
            )
        if len(results) == 1:  # a new step, a new delegation; the server restarts its ids
            return ScriptedProvider.tool_call(
                "delegate", {"agent": "simmons", "task": "history"}, id="call_0"
            )
        return ScriptedProvider.text(" | ".join(m.content or "" for m in results))

    rt, _ = runtime(
        workspace_dir,
        by_agent(
            {
                "arnold": arnold,
                "veblen": lambda r: ScriptedProvider.text("veblen says"),
                "simmons": lambda r: ScriptedProvider.text("simmons says"),
            }
        ),
    )
    run_id, _ = await submit(rt, "go")
    with anyio.fail_after(10):
        await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    await rt.aclose()
    assert run is not None and run["status"] == "done"
    assert [k["agent"] for k in run["tasks"][0]["children"]] == ["veblen", "simmons"]
    assert run["answer"] == "veblen says | simmons says"


# -- 4. "midnight today" computed as now - 24 h is wrong on 23- and 25-hour days ------------------


def test_forecast_day_start_is_todays_midnight_on_dst_days(store: Store) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from harness.ledger import reads as ledger_report
    from harness.usage import Budget

    ny = ZoneInfo("America/New_York")
    late_on_long_day = datetime(2026, 11, 1, 23, 30, tzinfo=ny).timestamp()  # 25-hour day
    early_after_short_day = datetime(2026, 3, 9, 0, 30, tzinfo=ny).timestamp()  # after 23 h
    budgets = {"veblen": Budget(tokens=1000)}
    [a] = store.read_sync(ledger_report.forecast, budgets, ny, late_on_long_day)
    [b] = store.read_sync(ledger_report.forecast, budgets, ny, early_after_short_day)
    assert (a["day"], a["day_started"]) == ("2026-11-01", "2026-11-01T00:00-04:00")
    assert (b["day"], b["day_started"]) == ("2026-03-09", "2026-03-09T00:00-04:00")


# -- 5. one failing report schedule rolls back all of maintenance and kills the worker ------------


def test_a_report_that_cannot_be_written_does_not_block_maintenance(workspace_dir: Path) -> None:
    import time

    from sqlalchemy import insert

    from harness.store.schema import schedules as schedules_table
    from tests.helpers import maintain

    config = workspace_dir / "config/harness.toml"
    config.write_text(
        config.read_text()
        + '\n[[schedules]]\nname = "morning"\ncron = "* * * * *"\n'
        + 'report = "config/harness.toml/%Y-%m-%d.md"\n'  # the folder cannot be created
    )
    rt, _ = runtime(workspace_dir, [])
    try:
        rt.store.write_sync(
            lambda c: c.execute(
                insert(schedules_table).values(name="morning", last_fire_at=time.time() - 3600)
            )
        )
        _, task_id = rt.store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
        rt.store.write_sync(queue.claim, 999, 0.01)  # a worker that then went away
        time.sleep(0.05)
        maintain(rt, 1)  # the report's duty fails; reaping goes on
        task = rt.store.read_sync(queue.get_task, task_id)
        assert task is not None and task.status == TaskStatus.QUEUED  # the lease was reaped
    finally:
        rt.store.close()


# -- 6. two loops noticing "declared dead" each take a fresh epoch; the second cuts off work ---


@pytest.mark.anyio
async def test_a_late_dead_heartbeat_does_not_cancel_work_of_the_renewed_epoch(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import worker as worker_module
    from harness.worker import Worker

    toml = workspace_dir / "config/harness.toml"
    toml.write_text(
        toml.read_text().replace("lease_s = 60", "lease_s = 0.6\nidle_poll_max_s = 0.05")
    )
    monkeypatch.setattr(worker_module, "MAINTENANCE_EVERY_S", 0.05)
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok", delay_s=1.0))
    w = Worker(rt, 2, handle_signals=False)
    real_write = rt.store.write
    armed, marked, gate = False, anyio.Event(), anyio.Event()

    async def write(fn: Any, *args: Any, **kw: Any) -> Any:
        nonlocal armed
        if fn is worker_module._beat and armed:
            armed = False
            # another worker's maintenance declares this one dead just now (it was paused)...
            await real_write(workers.mark_stopped, [args[0]])
            result = await real_write(fn, *args, **kw)  # None: declared dead
            marked.set()
            await gate.wait()  # ...and this heartbeat's answer comes back late
            return result
        return await real_write(fn, *args, **kw)

    rt.store.write = write  # type: ignore[method-assign]
    task_id = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        with anyio.fail_after(5):
            while w.id == 0:
                await anyio.sleep(0.01)
            armed = True
            await marked.wait()
            # the dispatch loop notices too (its claim is refused), takes a fresh epoch, claims
            _, task_id = await submit(rt, "question", "veblen")
            while not provider.requests:  # its model call is in flight
                await anyio.sleep(0.01)
            gate.set()
        with anyio.move_on_after(4):
            while (await rt.store.read(queue.get_task, task_id)).status != "done":  # type: ignore[union-attr]
                await anyio.sleep(0.05)
        w.stop()
    task = await rt.store.read(queue.get_task, task_id)
    await rt.aclose()
    assert task is not None and task.status == TaskStatus.DONE
    assert len(provider.requests) == 1  # the renewed epoch's call was never cut off


# -- 7. a provider error that can never succeed is retried as a task anyway -----------------------


@pytest.mark.anyio
async def test_a_non_retryable_provider_error_fails_the_task_at_once(workspace_dir: Path) -> None:
    rt, _ = runtime(
        workspace_dir, [ScriptedProvider.error(401, "invalid api key", retryable=False)]
    )
    await submit(rt, "question", "veblen")
    wid = await rt.store.write(workers.register_worker, 1)
    [task] = await rt.store.write(queue.claim, wid, 60)
    status = await TaskRunner(rt, task, wid).run()
    await rt.aclose()
    assert status == TaskStatus.FAILED


# -- 8. a worker's own maintenance declares itself dead after a stall and reaps its own tasks -----


def test_a_workers_own_maintenance_never_reaps_its_own_running_tasks(workspace_dir: Path) -> None:
    import time

    from sqlalchemy import update

    from tests.helpers import maintain

    rt, _ = runtime(workspace_dir, [])
    try:
        me = rt.store.write_sync(workers.register_worker, 1)
        _, task_id = rt.store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
        rt.store.write_sync(queue.claim, me, 3600)
        # the worker's event loop stalled for a while: its last heartbeat is old
        rt.store.write_sync(
            lambda c: c.execute(
                update(workers_table)
                .where(workers_table.c.id == me)
                .values(heartbeat_at=time.time() - 600)
            )
        )
        maintain(rt, me)  # its own maintenance runs first
        task = rt.store.read_sync(queue.get_task, task_id)
        assert task is not None and task.status == TaskStatus.RUNNING
    finally:
        rt.store.close()


# -- 9. one call may carry several paid attempts, but only one attempt is reserved ----------------


@pytest.mark.anyio
async def test_retried_attempts_inside_one_call_cannot_take_an_agent_past_its_budget(
    workspace_dir: Path,
) -> None:
    from harness.messages import ChatMessage
    from harness.usage import CallOutcome, CallRecord, Usage
    from tests.helpers import no_shrinking, set_front_matter

    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "1000")
    set_front_matter(workspace_dir / "agents/veblen.md", "max_tokens", "384")
    no_shrinking(workspace_dir)  # the canned attempts below spend 384 whatever is granted
    spent = Usage(prompt_tokens=200, completion_tokens=384)  # cut at max_tokens (384)

    def rec(outcome: CallOutcome, attempt: int) -> CallRecord:
        return CallRecord("local", "local", outcome, spent, attempt=attempt, status=200)

    # what OpenAIProvider returns after two replies that broke the JSON tool schema
    # (tokens spent, reply unusable, retried: provider.FORMAT_ATTEMPTS) and a good third one
    completion = Completion(
        ChatMessage(role="assistant", content="answer"),
        "stop",
        spent,
        "local",
        [rec(CallOutcome.ERROR, 1), rec(CallOutcome.ERROR, 2), rec(CallOutcome.OK, 3)],
    )
    rt, _ = runtime(workspace_dir, [completion])
    await submit(rt, "question", "veblen")
    wid = await rt.store.write(workers.register_worker, 1)
    [task] = await rt.store.write(queue.claim, wid, 60)
    await TaskRunner(rt, task, wid).run()
    used = rt.store.read_sync(
        lambda c: c.execute(
            select(usage_daily.c.prompt_tokens + usage_daily.c.completion_tokens).where(
                usage_daily.c.agent == "veblen"
            )
        ).scalar()
    )
    await rt.aclose()
    assert used is not None and used <= 1000


@pytest.mark.anyio
async def test_each_retry_settles_the_failed_attempt_so_one_reservation_is_held_at_a_time(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed during a retry leaves one unsettled row, not one per attempt: the
    failed attempts are already in the ledger as errors with what they really cost."""
    from harness import steps
    from harness.messages import ChatMessage
    from harness.usage import CallOutcome, CallRecord, Usage

    def rec(outcome: CallOutcome, attempt: int, usage: Usage) -> CallRecord:
        return CallRecord("local", "local", outcome, usage, attempt=attempt, status=200)

    good = Usage(prompt_tokens=30, completion_tokens=7)
    completion = Completion(
        ChatMessage(role="assistant", content="answer"),
        "stop",
        good,
        "local",
        [
            rec(CallOutcome.ERROR, 1, Usage()),
            rec(CallOutcome.ERROR, 2, Usage(prompt_tokens=30, completion_tokens=3)),
            rec(CallOutcome.OK, 3, good),
        ],
    )
    seen: list[tuple[int, int]] = []  # (reservations held, error rows) after each retry's tx
    real = steps._next_attempt_tx

    def spy(conn: Any, *args: Any, **kwargs: Any) -> Any:
        rid = real(conn, *args, **kwargs)
        count = select(func.count())
        held = conn.execute(count.select_from(reservations)).scalar()
        errors = conn.execute(count.select_from(calls).where(calls.c.outcome == "error")).scalar()
        seen.append((held, errors))
        return rid

    monkeypatch.setattr(steps, "_next_attempt_tx", spy)
    rt, _ = runtime(workspace_dir, [completion])
    await submit(rt, "question", "veblen")
    await work(rt)
    assert seen == [(1, 0), (1, 1), (1, 2)]  # the first reservation, then one per retry
    outcomes = rt.store.read_sync(
        lambda c: c.execute(select(calls.c.outcome, calls.c.completion_tokens)).all()
    )
    assert sorted(outcomes) == [("error", 0), ("error", 3), ("ok", 7)]
    assert _count(rt, reservations) == 0 and _reserved(rt) == 0
    await rt.aclose()


# -- 10. PostgreSQL: roll-up rows are locked in a different order by record() and reserve() -------


@pytest.mark.postgres
def test_a_late_answer_does_not_deadlock_with_a_new_reservation(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from harness import ledger
    from harness.ledger import CallContext
    from harness.settings import Settings
    from harness.usage import Budget, CallOutcome, CallRecord, Usage

    settings = Settings.model_validate(
        {
            "timezone": "UTC",
            "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
            "models": {"m": {"provider": "p", "id": "m"}},
            "default_model": "m",
        }
    )
    s = Store.open(pg_url)
    day = ledger.day_of(time.time(), settings.tz)
    ok = CallRecord("p", "m", CallOutcome.OK, Usage(10, 5))

    def reserve(worker_id: int) -> int:
        rid, _ = s.write_sync(
            ledger.reserve,
            CallContext("veblen", worker_id=worker_id),
            settings,
            model="m",
            prompt_tokens=100,
            max_tokens=0,
            min_tokens=0,
            budget=Budget(tokens=10_000),
            workspace_budget=Budget(tokens=100_000),
            day=day,
        )
        return rid

    s.write_sync(ledger.record, CallContext("arnold"), [ok], settings)  # the day's first call
    in_flight = reserve(1)  # worker 1's veblen call...
    s.write_sync(ledger.settle_orphans, settings, [1])  # ...worker 1 looked dead (paused)

    took_agent_row, go_on = threading.Event(), threading.Event()
    real_take = ledger.budgets._take

    def take(conn: Any, d: str, agent: str, *args: Any) -> Any:
        if agent == "*" and not go_on.is_set():
            took_agent_row.set()  # reserve() holds the veblen row now
            go_on.wait(5)
        return real_take(conn, d, agent, *args)

    monkeypatch.setattr(ledger.budgets, "_take", take)
    errors: list[BaseException] = []

    def new_call() -> None:  # worker 2 starts another veblen call
        try:
            reserve(2)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=new_call)
    t.start()
    took_agent_row.wait(5)
    threading.Timer(0.5, go_on.set).start()
    try:  # worker 1 resumes: its answer arrives and replaces the unsettled row
        s.write_sync(ledger.record, CallContext("veblen"), [ok], settings, reservation_id=in_flight)
    except BaseException as exc:
        errors.append(exc)
    t.join(10)
    s.close()
    assert errors == []
