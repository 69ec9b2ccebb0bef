"""The token ledger: exact sums, budgets under concurrency, days in a time zone, unsettled
calls, pause and resume at the next day, and the CLI's JSON/CSV shapes."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from harness import clock, ledger
from harness.cli import app
from harness.errors import BudgetExceeded
from harness.ledger import CallContext
from harness.ledger import reads as ledger_report
from harness.messages import ChatRequest
from harness.settings import Settings
from harness.store import Store, queue, views, workers
from harness.store.schema import WORKSPACE, calls, reservations, tasks, usage_daily
from harness.testing import ScriptedProvider
from harness.usage import Budget, CallOutcome, CallRecord, Usage
from tests.helpers import no_shrinking, runtime, set_front_matter, submit, work

SETTINGS = Settings.model_validate(
    {
        "timezone": "America/New_York",
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {
            "m": {
                "provider": "p",
                "id": "m",
                "price_input": 2.0,
                "price_cached_input": 0.5,
                "price_output": 8.0,
            },
        },
        "default_model": "m",
    }
)


def ok(prompt: int, completion: int, cached: int = 0, *, estimated: bool = False) -> CallRecord:
    usage = Usage(prompt, completion, cached, 0, estimated)
    return CallRecord(provider="p", model="m", outcome=CallOutcome.OK, usage=usage)


def reserve(store: Store, agent: str, tokens: int, budget: Budget, day: str = "2026-11-29") -> int:
    rid, _ = store.write_sync(
        ledger.reserve,
        CallContext(agent, worker_id=1),
        SETTINGS,
        model="m",
        prompt_tokens=tokens,
        max_tokens=0,
        min_tokens=0,
        budget=budget,
        workspace_budget=Budget(),
        day=day,
    )
    return rid


def test_record_sums_exactly_and_prices_cached_input_separately(store: Store) -> None:
    run_id, task_id = store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
    ctx = CallContext("veblen", run_id, task_id)
    failed = CallRecord(provider="p", model="m", outcome=CallOutcome.ERROR, status=500, attempt=1)
    store.write_sync(ledger.record, ctx, [failed, ok(1000, 200, cached=400)], SETTINGS)
    store.write_sync(ledger.record, ctx, [ok(10, 5, estimated=True)], SETTINGS)
    budgets = {"veblen": Budget(tokens=10_000)}
    [row] = store.read_sync(ledger_report.rows, budgets)
    assert row["calls"] == 3 and row["error_calls"] == 1 and row["estimated_calls"] == 1
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
        1010,
        400,
        205,
    )
    assert row["total_tokens"] == 1215 and row["used_pct"] == 12.2
    expected = (600 * 2.0 + 400 * 0.5 + 200 * 8.0 + 10 * 2.0 + 5 * 8.0) / 1e6
    assert row["cost_usd"] == pytest.approx(expected)
    # the same numbers through the call rows (by run) and the run's roll-up
    [by_run] = store.read_sync(ledger_report.rows, budgets, run_id=run_id)
    assert {k: by_run[k] for k in row} == row
    run = store.read_sync(views.get_run, run_id)
    assert run is not None and run["usage"]["total_tokens"] == 1215 and run["usage"]["calls"] == 3
    ws = store.read_sync(
        lambda c: (
            c.execute(select(usage_daily).where(usage_daily.c.agent == WORKSPACE)).mappings().one()
        )
    )
    assert ws["prompt_tokens"] == 1010


def test_days_follow_the_configured_time_zone(store: Store) -> None:
    ny = ZoneInfo("America/New_York")
    late_evening = datetime(2026, 3, 7, 23, 30, tzinfo=ny).timestamp()  # 04:30 UTC on the 8th
    after_midnight = datetime(2026, 3, 8, 0, 30, tzinfo=ny).timestamp()
    ctx = CallContext("veblen")
    store.write_sync(ledger.record, ctx, [ok(1, 1)], SETTINGS, ts=late_evening)
    store.write_sync(ledger.record, ctx, [ok(2, 2)], SETTINGS, ts=after_midnight)
    days = [(r["day"], r["total_tokens"]) for r in store.read_sync(ledger_report.rows, {})]
    assert days == [("2026-03-07", 2), ("2026-03-08", 4)]
    # the next day starts at local midnight, also across the DST change (23-hour day)
    start = ledger.next_day_start(after_midnight, ny)
    assert datetime.fromtimestamp(start, ny) == datetime(2026, 3, 9, tzinfo=ny)
    assert start - ledger.next_day_start(late_evening, ny) == 23 * 3600


def test_reservation_is_refused_past_the_budget_and_settles_to_actual(store: Store) -> None:
    budget = Budget(tokens=1000)
    rid = reserve(store, "simmons", 800, budget)
    with pytest.raises(BudgetExceeded) as info:
        reserve(store, "simmons", 300, budget)
    assert info.value.agent == "simmons" and "daily token budget" in str(info.value)
    assert "800" in str(info.value)
    ts = datetime(2026, 11, 29, 12, tzinfo=ZoneInfo("America/New_York")).timestamp()
    store.write_sync(
        ledger.record, CallContext("simmons"), [ok(100, 50)], SETTINGS, reservation_id=rid, ts=ts
    )
    reserve(store, "simmons", 800, budget)  # 150 used + 800 reserved <= 1000
    assert store.read_sync(ledger.today_use, "simmons", "2026-11-29") == (  # type: ignore[comparison-overlap]
        150,
        pytest.approx(0.0006),
    )


def test_workspace_budget_caps_all_agents_together(store: Store) -> None:
    def take(agent: str, n: int) -> None:
        store.write_sync(
            ledger.reserve,
            CallContext(agent),
            SETTINGS,
            model="m",
            prompt_tokens=n,
            max_tokens=0,
            min_tokens=0,
            budget=Budget(),
            workspace_budget=Budget(tokens=1000),
            day="2026-11-29",
        )

    take("a", 600)
    with pytest.raises(BudgetExceeded) as info:
        take("b", 600)
    assert info.value.agent == "workspace"
    # the refused agent's part was rolled back with the transaction
    reserved = store.read_sync(
        lambda c: c.execute(select(func.sum(usage_daily.c.reserved_tokens))).scalar()
    )
    assert reserved == 600 * 2  # agent "a" and the workspace row


def test_what_a_try_took_when_the_other_row_refused_is_given_back(store: Store) -> None:
    """A reservation's first try takes the agent's row and not the workspace's (near the
    workspace budget's end; or the agent's row not there yet while the workspace's is): what
    it took is given back, and the rows hold exactly what was granted in the end."""

    def take(agent: str, prompt: int, max_tokens: int, workspace: int | None) -> int:
        _, granted = store.write_sync(
            ledger.reserve,
            CallContext(agent),
            SETTINGS,
            model="m",
            prompt_tokens=prompt,
            max_tokens=max_tokens,
            min_tokens=10,
            budget=Budget(tokens=10_000),
            workspace_budget=Budget(tokens=workspace),
            day="2026-11-29",
        )
        return int(granted)

    def reserved() -> dict[str, tuple[int, float]]:
        rows = store.read_sync(
            lambda c: c.execute(
                select(
                    usage_daily.c.agent, usage_daily.c.reserved_tokens, usage_daily.c.reserved_cost
                )
            ).all()
        )
        return {agent: (tokens, cost) for agent, tokens, cost in rows}

    assert take("a", 100, 500, None) == 500  # the day's rows: a's and the workspace's
    # b's row is not there yet, the workspace's is: taken one by one, b's made first
    assert take("b", 100, 200, None) == 200
    assert {k: v[0] for k, v in reserved().items()} == {"a": 600, "b": 300, WORKSPACE: 900}
    # b's row takes 100 + 900, the workspace's (1,000 budget, 900 reserved) refuses: b's part
    # is given back; the room left (1,000 - 900 - a prompt of 100) is no output: refused
    with pytest.raises(BudgetExceeded):
        take("b", 100, 900, 1_000)
    assert {k: v[0] for k, v in reserved().items()} == {"a": 600, "b": 300, WORKSPACE: 900}
    # with 1,100: the room left is 200, 100 of it output
    assert take("b", 100, 900, 1_100) == 100
    after = reserved()
    assert {k: v[0] for k, v in after.items()} == {"a": 600, "b": 500, WORKSPACE: 1_100}
    cost = after["a"][1] + after["b"][1]
    assert after[WORKSPACE][1] == pytest.approx(cost)  # the costs given back exactly too


def test_concurrent_reservations_never_exceed_the_budget(store: Store) -> None:
    budget = Budget(tokens=10_000)
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            rid = reserve(store, "bradlee", 700, budget)
        except BudgetExceeded:
            with lock:
                refused.append(1)
            return
        with lock:
            granted.append(rid)

    threads = [threading.Thread(target=call) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 14 and len(refused) == 26  # 14 * 700 = 9,800 <= 10,000
    total = store.read_sync(lambda c: c.execute(select(func.sum(reservations.c.tokens))).scalar())
    assert total == 9800


def test_reservations_of_many_agents_at_once_never_deadlock(store: Store) -> None:
    """The day rows are taken in one order even when a reservation's UPDATEs, sent together,
    did not all take (the day's first call: rows not there yet; an agent's budget spent):
    they are undone and taken again in order. (Sent together and given back instead, the
    workspace's row was held while an agent's was taken: PostgreSQL found deadlocks.)"""
    budgets = {"veblen": Budget(tokens=3_000), "simmons": Budget(), "bradlee": Budget()}
    today = ledger.day_of(clock.now(), SETTINGS.tz)  # the day the answers are recorded on
    failures: list[BaseException] = []
    start = threading.Barrier(18)

    def calls(agent: str) -> None:
        start.wait()
        for _ in range(6):
            try:
                rid = reserve(store, agent, 500, budgets[agent], today)
            except BudgetExceeded:
                continue
            except BaseException as exc:
                failures.append(exc)
                return
            ctx = CallContext(agent, worker_id=1)
            record = ok(400, 0)
            store.write_sync(ledger.record, ctx, [record], SETTINGS, reservation_id=rid)

    threads = [threading.Thread(target=calls, args=(a,)) for a in budgets for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    rows = store.read_sync(
        lambda c: dict(
            c.execute(
                select(usage_daily.c.agent, usage_daily.c.calls).where(usage_daily.c.day == today)
            ).all()
        )
    )
    assert rows["simmons"] == rows["bradlee"] == 36  # never refused: every call recorded
    assert 0 < rows["veblen"] < 36  # its budget ran out on the way
    assert rows[WORKSPACE] == rows["veblen"] + 72
    assert (
        store.read_sync(
            lambda c: c.execute(select(func.count()).select_from(reservations)).scalar()
        )
        == 0
    )


def orphan(store: Store, day: str = "2026-11-29") -> tuple[CallContext, int]:
    """A reservation of 400 + 500 tokens whose worker was declared dead: settled as
    unsettled. Returns the call's context and the reservation's id."""
    run_id, task_id = store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
    wid = store.write_sync(workers.register_worker, 1)
    ctx = CallContext("veblen", run_id, task_id, wid)
    rid, _ = store.write_sync(
        ledger.reserve,
        ctx,
        SETTINGS,
        model="m",
        prompt_tokens=400,
        max_tokens=500,
        min_tokens=500,
        budget=Budget(tokens=1000),
        workspace_budget=Budget(),
        day=day,
    )
    assert store.write_sync(ledger.settle_orphans, SETTINGS, [wid]) == 1
    return ctx, rid


def test_orphaned_reservation_is_recorded_as_unsettled(store: Store) -> None:
    orphan(store)
    row = store.read_sync(lambda c: c.execute(select(calls)).mappings().one())
    assert row["outcome"] == "unsettled" and row["prompt_tokens"] == 900 and row["estimated"]
    # the reserved cost (the output share priced as output), not 900 tokens repriced as input
    reserved_cost = SETTINGS.models["m"].cost(400, 0, 500)
    assert row["cost_usd"] == pytest.approx(reserved_cost)
    assert reserved_cost != pytest.approx(SETTINGS.models["m"].cost(900, 0, 0))
    [r] = store.read_sync(ledger_report.rows, {})
    assert r["unsettled_calls"] == 1 and r["cost_usd"] == pytest.approx(reserved_cost)
    assert (
        store.read_sync(
            lambda c: c.execute(select(func.count()).select_from(reservations)).scalar()
        )
        == 0
    )
    reserved = store.read_sync(
        lambda c: c.execute(select(func.sum(usage_daily.c.reserved_tokens))).scalar()
    )
    assert reserved == 0


def test_an_answer_after_its_worker_was_declared_dead_replaces_the_unsettled_row(
    store: Store,
) -> None:
    """The worker was only paused: its call was charged as unsettled, then the real answer
    came and is recorded once, with actual usage. (At noon on a fixed day, running on: the
    reservation, the unsettled row and the answer fall on one day, whenever this runs.)"""
    import time

    noon, started = datetime(2026, 11, 29, 12, tzinfo=ZoneInfo("UTC")).timestamp(), time.time()
    clock.use(lambda: noon + time.time() - started)
    try:
        ctx, rid = orphan(store, ledger.day_of(clock.now(), SETTINGS.tz))
        record = ok(400, 30)
        [call_id] = store.write_sync(ledger.record, ctx, [record], SETTINGS, reservation_id=rid)
    finally:
        clock.use(None)
    [row] = store.read_sync(lambda c: c.execute(select(calls)).mappings().all())
    assert row["id"] == call_id and row["outcome"] == "ok"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (400, 30)
    days = store.read_sync(lambda c: c.execute(select(usage_daily)).mappings().all())
    assert sorted(day["agent"] for day in days) == sorted(["veblen", WORKSPACE])
    for day in days:
        assert (day["calls"], day["unsettled_calls"], day["prompt_tokens"]) == (1, 0, 400)
        assert (day["completion_tokens"], day["reserved_tokens"]) == (30, 0)


def test_prune_drops_old_call_rows_but_keeps_roll_ups(store: Store) -> None:
    old = datetime(2026, 1, 1, 12, tzinfo=ZoneInfo("UTC")).timestamp()
    store.write_sync(ledger.record, CallContext("veblen"), [ok(5, 5)], SETTINGS, ts=old)
    store.write_sync(ledger.record, CallContext("veblen"), [ok(7, 7)], SETTINGS)
    assert store.write_sync(ledger.prune, "2026-06-01") == 1
    rows = store.read_sync(ledger_report.rows, {})
    assert [r["total_tokens"] for r in rows] == [10, 14]


@pytest.mark.anyio
async def test_paused_task_resumes_by_itself_when_the_next_day_starts(workspace_dir: Path) -> None:
    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace('timezone = "UTC"', 'timezone = "Asia/Tokyo"'))
    # each call uses 2,500: the second cannot fit even a shrunk answer in the 100 left
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "2600")
    tokyo = ZoneInfo("Asia/Tokyo")
    t = [datetime(2026, 11, 29, 23, 0, tzinfo=tokyo).timestamp()]
    clock.use(lambda: t[0])
    try:
        big = Usage(prompt_tokens=2000, completion_tokens=500)  # each call uses 2,500
        rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("answer", usage=big))
        first, _ = await submit(rt, "one", "veblen")
        await work(rt)
        second, _ = await submit(rt, "two", "veblen")
        await work(rt)  # 2,500 used + (prompt estimate + the least output) would pass 2,600
        assert (await rt.store.read(views.get_run, first))["status"] == "done"  # type: ignore[index]
        run = await rt.store.read(views.get_run, second)
        assert run is not None and run["status"] == "paused"
        assert "2026-11-29" in run["reason"] and "veblen" in run["reason"]
        assert len(provider.requests) == 1  # nothing was sent while out of budget
        await work(rt)  # still the same day: stays paused
        assert (await rt.store.read(views.get_run, second))["status"] == "paused"  # type: ignore[index]
        t[0] = datetime(2026, 11, 30, 0, 1, tzinfo=tokyo).timestamp()  # after local midnight
        await work(rt)
        assert (await rt.store.read(views.get_run, second))["status"] == "done"  # type: ignore[index]
        days = [(r["day"], r["total_tokens"]) for r in await rt.store.read(ledger_report.rows, {})]
        assert days == [("2026-11-29", 2500), ("2026-11-30", 2500)]
    finally:
        clock.use(None)


@pytest.mark.anyio
async def test_a_retry_after_midnight_is_reserved_on_the_new_day(workspace_dir: Path) -> None:
    """A step began (and reserved) on the 29th; its first attempt failed after local
    midnight, having spent tokens. The failed attempt is charged to the 30th, and so is the
    retry's reservation, which the 30th's budget refuses: the task pauses until the 30th
    ends (in the workspace's time zone), and nothing stays reserved on the 29th."""
    from harness.runtime import build_runtime
    from harness.settings import load_workspace

    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace('timezone = "UTC"', 'timezone = "Asia/Tokyo"'))
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "2600")
    tokyo = ZoneInfo("Asia/Tokyo")
    t = [datetime(2026, 11, 29, 23, 59, 59, tzinfo=tokyo).timestamp()]
    spent = Usage(prompt_tokens=2000, completion_tokens=500)  # a long reply, then a 500

    class RetriesPastMidnight:
        async def complete(self, request: ChatRequest, *, attempts: Any = None) -> object:
            await attempts.before("local", [], prompt_tokens=50, max_tokens=384)
            attempts.sending()
            t[0] += 2.0  # the failed attempt took two seconds: it is the 30th now
            failed = CallRecord("local", "local", CallOutcome.ERROR, spent, status=500)
            try:  # as OpenAIProvider does: a refusal carries the attempts made
                await attempts.before("local", [failed], prompt_tokens=50, max_tokens=384)
            except BudgetExceeded as exc:
                exc.records = [failed]  # type: ignore[attr-defined]
                raise
            raise AssertionError("the retry should have been refused")

        async def aclose(self) -> None:
            pass

    clock.use(lambda: t[0])
    try:
        ws = load_workspace(workspace_dir)
        rt = build_runtime(ws, provider=RetriesPastMidnight(), store=Store.open(ws.database_url()))  # type: ignore[arg-type]
        _, task_id = await submit(rt, "one", "veblen")
        wid = await rt.store.write(workers.register_worker, 1)
        [task] = await rt.store.write(queue.claim, wid, 60)
        from harness.loop import TaskRunner
        from harness.store import TaskStatus

        assert await TaskRunner(rt, task, wid).run() == TaskStatus.PAUSED
        paused = await rt.store.read(queue.get_task, task_id)
        assert paused is not None and "2026-11-30" in (paused.status_reason or "")
        not_before = await rt.store.read(
            lambda c: c.execute(select(tasks.c.not_before).where(tasks.c.id == task_id)).scalar()
        )
        assert not_before == datetime(2026, 12, 1, tzinfo=tokyo).timestamp()
        u = usage_daily.c
        by_day = await rt.store.read(
            lambda c: c.execute(
                select(u.day, u.completion_tokens, u.reserved_tokens)
                .where(u.agent == "veblen")
                .order_by(u.day)
            ).all()
        )
        assert [tuple(r) for r in by_day] == [("2026-11-29", 0, 0), ("2026-11-30", 500, 0)]
        await rt.aclose()
    finally:
        clock.use(None)


def test_ledger_cli_json_and_csv_shapes(workspace_dir: Path) -> None:
    store = Store.open(f"sqlite:///{workspace_dir / 'var/harness.db'}")
    store.write_sync(ledger.record, CallContext("veblen"), [ok(100, 20, cached=10)], Settings())
    store.close()
    runner = CliRunner()
    res = runner.invoke(app, ["--workspace", str(workspace_dir), "ledger", "--json"])
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.stdout)
    required = {
        "day",
        "agent",
        "calls",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "estimated_calls",
        "budget_tokens",
    }
    assert required <= set(row)
    assert (row["agent"], row["calls"], row["total_tokens"], row["budget_tokens"]) == (
        "veblen",
        1,
        120,
        10_000_000,
    )
    res = runner.invoke(app, ["--workspace", str(workspace_dir), "ledger", "--csv"])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows[0]["agent"] == "veblen" and rows[0]["total_tokens"] == "120"
    res = runner.invoke(app, ["--workspace", str(workspace_dir), "ledger", "--forecast", "--json"])
    assert res.exit_code == 0
    assert {f["agent"] for f in json.loads(res.stdout)} >= {"veblen", "arnold"}
    res = runner.invoke(app, ["--workspace", str(workspace_dir), "ledger", "--since", "last week"])
    assert res.exit_code == 2 and "--day/--since" in res.output


@pytest.mark.anyio
async def test_many_concurrent_tasks_never_take_an_agent_past_its_budget(
    workspace_dir: Path, db_url: str
) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "6000")
    no_shrinking(workspace_dir)  # canned usage ignores a shrunk max_tokens; a server would not
    usage = Usage(prompt_tokens=300, completion_tokens=100)
    rt, provider = runtime(
        workspace_dir, lambda r: ScriptedProvider.text("ok", usage=usage, delay_s=0.05), db_url
    )
    runs = [(await submit(rt, f"q{i}", "veblen"))[0] for i in range(30)]
    await work(rt, concurrency=12)
    statuses = [(await rt.store.read(views.get_run, r))["status"] for r in runs]  # type: ignore[index]
    done = statuses.count("done")
    assert done + statuses.count("paused") == 30 and 0 < done < 30
    [row] = await rt.store.read(ledger_report.rows, {}, agent="veblen")
    assert row["total_tokens"] == 400 * done <= 6000
    assert row["calls"] == len(provider.requests) == done  # a refused call is never sent
    leftover = await rt.store.read(
        lambda c: c.execute(select(func.sum(usage_daily.c.reserved_tokens))).scalar()
    )
    assert not leftover
    await rt.aclose()


@pytest.mark.parametrize("zone", ["America/Santiago", "Asia/Beirut", "Australia/Lord_Howe"])
def test_day_of_agrees_with_the_calendar_across_dst_changes_at_midnight(zone: str) -> None:
    """``day_of`` keeps the last day's bounds; stepping through two years (these zones
    change their clocks at midnight, or by half an hour) it never answers a stale day."""
    tz = ZoneInfo(zone)
    ts = datetime(2025, 1, 1, tzinfo=tz).timestamp()
    end = datetime(2027, 1, 1, tzinfo=tz).timestamp()
    while ts < end:
        assert ledger.day_of(ts, tz) == datetime.fromtimestamp(ts, tz).date().isoformat(), ts
        ts += 1799.0  # not a divisor of an hour: lands on every side of each change


def test_the_light_reader_reads_the_ledger_as_the_store_does(workspace_dir: Path) -> None:
    """``harness ledger`` reads a SQLite file with ``sqlite3`` (no SQLAlchemy): the same rows
    and forecast as the store, for every selection; the command never imports SQLAlchemy."""
    import subprocess
    import sys

    from harness.store.light import open_reader

    url = f"sqlite:///{workspace_dir / 'var/harness.db'}"
    store = Store.open(url)
    run_id, task_id = store.write_sync(queue.create_run, "g", "veblen", max_attempts=3)
    now = clock.now()
    for agent, model, n in (("veblen", "m", 100), ("veblen", "n", 7), ("simmons", "m", 30)):
        record = CallRecord(
            provider="p", model=model, outcome=CallOutcome.OK, usage=Usage(n, n // 2), attempt=1
        )
        failed = CallRecord(provider="p", model=model, outcome=CallOutcome.ERROR, status=500)
        ctx = CallContext(agent, run_id if agent == "veblen" else None, task_id)
        store.write_sync(ledger.record, ctx, [failed, record], SETTINGS, ts=now - 60)
    budgets = {"veblen": Budget(tokens=10_000), "simmons": Budget(tokens=40)}
    today = ledger.day_of(now, SETTINGS.tz)
    reader = open_reader(url)
    assert reader is not None
    selections: list[dict[str, Any]] = [
        {},
        {"by_model": True},
        {"agent": "veblen"},
        {"run_id": run_id},
        {"since": today, "until": today, "by_model": True},
        {"until": ledger.days_back(today, 1)},
    ]
    for kw in selections:
        light = reader.read_sync(ledger_report.rows, budgets, **kw)
        assert light == store.read_sync(ledger_report.rows, budgets, **kw), kw
    assert len(reader.read_sync(ledger_report.rows, budgets, by_model=True)) == 3
    assert reader.read_sync(ledger_report.rows, budgets, until=ledger.days_back(today, 1)) == []
    forecast = reader.read_sync(ledger_report.forecast, budgets, SETTINGS.tz, now)
    assert forecast == store.read_sync(ledger_report.forecast, budgets, SETTINGS.tz, now)
    assert [f["agent"] for f in forecast] == ["simmons", "veblen"] and forecast[0]["exhausted"]
    reader.close()
    store.close()
    probe = (
        "import sys\nfrom harness.cli import main\n"
        f"sys.argv = ['harness', '--workspace', {str(workspace_dir)!r}, 'ledger']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('sqlalchemy' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "False", res.stdout + res.stderr
