"""Cron schedules: instants across DST, exactly-once firing, catch-up, overlap, validation."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, insert, select

from harness import clock, schedules
from harness.errors import ConfigError
from harness.settings import ScheduleConfig, Settings, load_settings, validate_schedules
from harness.store import Store, queue
from harness.store.queue import Lease
from harness.store.schema import runs
from harness.store.schema import schedules as schedules_table

LONDON = ZoneInfo("Europe/London")
HOUR = 3600.0


def at(
    y: int,
    mo: int,
    d: int,
    h: int = 0,
    mi: int = 0,
    s: int = 0,
    *,
    fold: int = 0,
    tz: ZoneInfo = LONDON,
) -> float:
    """Epoch seconds of a wall-clock time in ``tz``."""
    return datetime(y, mo, d, h, mi, s, tzinfo=tz, fold=fold).timestamp()


def local(ts: float, tz: ZoneInfo = LONDON) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat()


def make_settings(*items: dict[str, Any]) -> Settings:
    """Workspace zone UTC; each schedule names its own zone unless it omits it."""
    return Settings(timezone="UTC", schedules=[ScheduleConfig(**item) for item in items])


def daily(name: str = "briefing", cron: str = "0 6 * * *", **kw: Any) -> dict[str, Any]:
    return {"name": name, "cron": cron, "timezone": "Europe/London", "goal": "Brief me.", **kw}


def last_fire(store: Store, name: str) -> float | None:
    return store.read_sync(
        lambda c: c.execute(
            select(schedules_table.c.last_fire_at).where(schedules_table.c.name == name)
        ).scalar()
    )


def scheduled_runs(store: Store, name: str) -> list[int]:
    return store.read_sync(
        lambda c: list(
            c.execute(select(runs.c.id).where(runs.c.schedule == name).order_by(runs.c.id))
            .scalars()
            .all()
        )
    )


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Any:
    s = Store.open(sqlite_url)
    yield s
    s.close()


# -- instants ------------------------------------------------------------------------------


def test_next_fire_follows_the_local_clock_across_dst() -> None:
    s = ScheduleConfig(**daily())
    st = make_settings()
    first = schedules.next_fire(s, st, at(2024, 3, 30, 12))
    second = schedules.next_fire(s, st, first)
    assert local(first) == "2024-03-31T06:00:00+01:00"  # spring forward in the night before
    assert second - first == 24 * HOUR
    autumn = schedules.next_fire(s, st, at(2024, 10, 26, 12))
    assert local(autumn) == "2024-10-27T06:00:00+00:00"
    assert autumn - at(2024, 10, 26, 6) == 25 * HOUR


def test_skipped_wall_time_fires_once_after_the_gap() -> None:
    s = ScheduleConfig(**daily(cron="30 1 * * *"))
    st = make_settings()
    gap_day = schedules.next_fire(s, st, at(2024, 3, 30, 12))
    assert local(gap_day) == "2024-03-31T02:00:00+01:00"  # 01:30 does not exist that night
    assert local(schedules.next_fire(s, st, gap_day)) == "2024-04-01T01:30:00+01:00"


def test_repeated_wall_time_fires_once_unless_the_hour_is_a_wildcard() -> None:
    st = make_settings()
    fixed = ScheduleConfig(**daily(cron="30 1 * * *"))
    first = schedules.next_fire(fixed, st, at(2024, 10, 26, 12))
    assert local(first) == "2024-10-27T01:30:00+01:00"
    assert local(schedules.next_fire(fixed, st, first)) == "2024-10-28T01:30:00+00:00"
    # inside the repeated hour, the latest instant is still the first 01:30
    assert schedules.latest_fire(fixed, st, at(2024, 10, 27, 1, 45, fold=1)) == first
    every = ScheduleConfig(**daily(cron="*/30 * * * *"))
    t, seen = at(2024, 10, 27, 0, 50), []
    for _ in range(5):
        t = schedules.next_fire(every, st, t)
        seen.append(local(t)[11:])
    assert seen == [
        "01:00:00+01:00",
        "01:30:00+01:00",
        "01:00:00+00:00",
        "01:30:00+00:00",
        "02:00:00+00:00",
    ]


def test_latest_fire_includes_an_instant_equal_to_now() -> None:
    s, st = ScheduleConfig(**daily()), make_settings()
    six = at(2024, 6, 1, 6)
    assert schedules.latest_fire(s, st, six) == six
    assert schedules.latest_fire(s, st, six - 0.5) == six - 24 * HOUR
    assert schedules.latest_fire(s, st, six + 0.999) == six


def test_the_workspace_zone_is_the_default() -> None:
    st = Settings(
        timezone="America/New_York",
        schedules=[ScheduleConfig(name="n", cron="0 6 * * *", goal="g")],
    )
    nxt = schedules.next_fire(st.schedules[0], st, at(2024, 6, 1, 12, tz=ZoneInfo("UTC")))
    assert datetime.fromtimestamp(nxt, ZoneInfo("America/New_York")).hour == 6


# -- firing --------------------------------------------------------------------------------


def test_fires_at_each_local_instant_across_a_dst_change(sqlite_store: Store) -> None:
    st = make_settings(daily(overlap="queue"))
    t, fired_at = at(2024, 3, 29, 12), []
    while t <= at(2024, 4, 2, 12):
        if sqlite_store.write_sync(schedules.fire_due, st, t):
            fired_at.append(local(last_fire(sqlite_store, "briefing") or 0))
        t += 0.5 * HOUR
    assert fired_at == [
        "2024-03-30T06:00:00+00:00",
        "2024-03-31T06:00:00+01:00",
        "2024-04-01T06:00:00+01:00",
        "2024-04-02T06:00:00+01:00",
    ]
    assert len(scheduled_runs(sqlite_store, "briefing")) == 4


def test_a_new_schedule_never_fires_retroactively(sqlite_store: Store) -> None:
    st = make_settings(daily())
    seen = at(2024, 6, 1, 6, 30)  # half an hour after today's instant
    assert sqlite_store.write_sync(schedules.fire_due, st, seen) == []
    assert last_fire(sqlite_store, "briefing") == seen  # "first seen" is recorded
    assert sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 23)) == []
    [run_id] = sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 2, 6, 0, 1))
    run = sqlite_store.read_sync(lambda c: c.execute(select(runs).where(runs.c.id == run_id)).one())
    assert (run.goal, run.agent, run.schedule) == ("Brief me.", "arnold", "briefing")


def test_missed_instants_fire_at_most_once_after_downtime(sqlite_store: Store) -> None:
    st = make_settings(daily(cron="0 * * * *"))
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 0, 30))
    back = at(2024, 6, 4, 9, 20)  # three days of hourly instants missed
    assert len(sqlite_store.write_sync(schedules.fire_due, st, back)) == 1
    assert last_fire(sqlite_store, "briefing") == at(2024, 6, 4, 9)  # only the latest one
    assert sqlite_store.write_sync(schedules.fire_due, st, back + 60) == []
    assert len(scheduled_runs(sqlite_store, "briefing")) == 1


def _finish(store: Store, run_id: int) -> None:
    def work(conn: Connection) -> None:
        [task] = queue.claim(conn, 1, 60, run_id=run_id)
        queue.complete(conn, Lease(task, 1), "done")

    store.write_sync(work)


def test_overlap_skip_waits_for_the_unfinished_run(sqlite_store: Store) -> None:
    st = make_settings(daily(cron="0 * * * *", overlap="skip"))
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 0, 30))
    [first] = sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 1))
    assert sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 2)) == []  # skipped
    assert last_fire(sqlite_store, "briefing") == at(2024, 6, 1, 2)  # consumed, not late
    _finish(sqlite_store, first)
    assert sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 2, 30)) == []
    [second] = sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 3))
    assert second > first
    [info] = sqlite_store.read_sync(schedules.describe, st, at(2024, 6, 1, 3, 10))
    assert info["last_run_id"] == second and info["last_run_status"] == "queued"


def test_overlap_queue_starts_anyway(sqlite_store: Store) -> None:
    st = make_settings(daily(cron="0 * * * *", overlap="queue", agent="veblen"))
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 0, 30))
    a = sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 1))
    b = sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 2))
    assert len(a) == len(b) == 1
    agents = sqlite_store.read_sync(lambda c: c.execute(select(runs.c.agent)).scalars().all())
    assert agents == ["veblen", "veblen"]


def test_each_instant_fires_once_with_concurrent_workers(db_url: str) -> None:
    st = make_settings(daily(cron="*/10 * * * *", overlap="queue"), daily("b", "5 * * * *"))
    stores = [Store.open(db_url) for _ in range(3)]
    start = at(2024, 6, 1, 0, 1)
    try:
        stores[0].write_sync(schedules.fire_due, st, start)
        fired: list[int] = []
        lock = threading.Lock()
        rounds = [start + i * 300 for i in range(1, 13)]  # 12 five-minute ticks
        barrier = threading.Barrier(len(stores))

        def worker(store: Store) -> None:
            for t in rounds:
                barrier.wait()
                ids = store.write_sync(schedules.fire_due, st, t)
                with lock:
                    fired.extend(ids)

        threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        for s in stores:
            s.close()
    check = Store.open(db_url)
    try:
        assert len(fired) == len(set(fired))
        # after first seen at 00:01 and up to 01:01: 00:10, 00:20, ... 01:00; and 00:05
        assert len(scheduled_runs(check, "briefing")) == 6
        assert len(scheduled_runs(check, "b")) == 1
        assert sorted(fired) == sorted(
            scheduled_runs(check, "briefing") + scheduled_runs(check, "b")
        )
    finally:
        check.close()


def test_the_worker_fires_schedules_during_maintenance(workspace_dir: Path) -> None:
    from harness import clock
    from tests.helpers import maintain, runtime

    config = workspace_dir / "config/harness.toml"
    config.write_text(
        config.read_text()
        + '\n[[schedules]]\nname = "minutely"\ncron = "* * * * *"\ngoal = "Tick."\n'
    )
    rt, _ = runtime(workspace_dir, [])
    now = at(2024, 6, 1, 12, 0, 30)
    clock.use(lambda: now)
    try:
        rt.store.write_sync(
            lambda c: c.execute(
                insert(schedules_table).values(name="minutely", last_fire_at=now - HOUR)
            )
        )
        maintain(rt)
        assert len(scheduled_runs(rt.store, "minutely")) == 1
        maintain(rt)
        assert len(scheduled_runs(rt.store, "minutely")) == 1
    finally:
        clock.use(None)
        rt.store.close()


# -- validation and describe ---------------------------------------------------------------


def test_validation_names_every_problem() -> None:
    st = make_settings(
        daily("a", cron="61 * * * *"),
        daily("a", timezone="Mars/Olympus"),
        daily("c", cron="0 0 31 2 *"),
        daily("d", goal="  "),
    )
    found = {(p.field, p.message.split(":")[0]) for p in validate_schedules(st)}
    assert found == {
        ("schedules[0].cron", "bad cron expression '61 * * * *'"),
        ("schedules[1].name", "duplicate schedule name 'a' (also schedules[0])"),
        ("schedules[1].timezone", "unknown time zone 'Mars/Olympus'"),
        ("schedules[2].cron", "bad cron expression '0 0 31 2 *'"),
        ("schedules[3].goal", "needs a non-empty goal"),
    }
    assert all(p.file == "config/harness.toml" for p in validate_schedules(st))


def test_bad_cron_is_reported_when_settings_load(workspace_dir: Path) -> None:
    config = workspace_dir / "config/harness.toml"
    config.write_text(
        config.read_text() + '\n[[schedules]]\nname = "x"\ncron = "every morning"\ngoal = "g"\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(workspace_dir)
    [problem] = exc.value.problems
    assert problem.field == "schedules[0].cron" and problem.file.endswith("config/harness.toml")
    assert "'every morning'" in str(problem)


def test_describe_lists_schedules_with_next_instant(sqlite_store: Store) -> None:
    st = make_settings(daily(), daily("hourly", cron="0 * * * *", timezone=None))
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 5))
    run_id, hourly_id = sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 6, 1))
    data = sqlite_store.read_sync(schedules.describe, st, at(2024, 6, 1, 6, 2))
    assert data == [
        {
            "name": "briefing",
            "cron": "0 6 * * *",
            "timezone": "Europe/London",
            "agent": "arnold",
            "goal": "Brief me.",
            "overlap": "skip",
            "last_fire_at": "2024-06-01T06:00:00+01:00",
            "next_fire_at": "2024-06-02T06:00:00+01:00",
            "last_run_id": run_id,
            "last_run_status": "queued",
            "overdue": False,
        },
        {
            "name": "hourly",
            "cron": "0 * * * *",
            "timezone": "UTC",
            "agent": "arnold",
            "goal": "Brief me.",
            "overlap": "skip",
            "last_fire_at": "2024-06-01T05:00:00+00:00",
            "next_fire_at": "2024-06-01T06:00:00+00:00",
            "last_run_id": hourly_id,
            "last_run_status": "queued",
            "overdue": False,
        },
    ]


def test_describe_says_overdue_when_no_worker_handled_an_instant(sqlite_store: Store) -> None:
    st = make_settings(daily("hourly", cron="0 * * * *", timezone=None))
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 5))  # first seen

    def overdue(when: float) -> bool:
        [info] = sqlite_store.read_sync(schedules.describe, st, when)
        return bool(info["overdue"])

    assert not overdue(at(2024, 6, 1, 5, 30))  # no instant passed since
    assert not overdue(at(2024, 6, 1, 6, 1))  # 05:00 UTC just passed: a worker has time
    assert overdue(at(2024, 6, 1, 6, 10))  # ten minutes on, still unhandled
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 6, 10))
    assert not overdue(at(2024, 6, 1, 6, 11))  # handled


def test_a_report_schedule_writes_the_morning_report_instead_of_a_run(
    sqlite_store: Store, tmp_path: Path
) -> None:
    st = make_settings(
        {
            "name": "morning",
            "cron": "0 7 * * *",
            "timezone": "Europe/London",
            "report": "reports/%Y-%m-%d.md",
        }
    )
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 8), root=tmp_path)  # first seen
    clock.use(lambda: at(2024, 6, 2, 3))  # the run was submitted overnight
    try:
        run_id, _ = sqlite_store.write_sync(
            queue.create_run, "overnight work", "arnold", max_attempts=3
        )
    finally:
        clock.use(None)
    assert (
        sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 2, 7, 0, 5), root=tmp_path)
        == []
    )
    report = (tmp_path / "reports/2024-06-02.md").read_text()
    assert report.startswith("#") and "overnight work" in report
    assert scheduled_runs(sqlite_store, "morning") == []  # no run was started
    # the same instant never writes twice
    (tmp_path / "reports/2024-06-02.md").unlink()
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 2, 7, 30), root=tmp_path)
    assert not (tmp_path / "reports/2024-06-02.md").exists()
    assert run_id > 0


@pytest.mark.parametrize("allowed", [False, True])
def test_a_report_path_through_a_link_out_of_the_workspace_is_refused(
    sqlite_store: Store, tmp_path: Path, allowed: bool
) -> None:
    """``report`` may not be absolute or climb out (a config error); a link inside the
    workspace that leads out is caught when the report is written."""
    outside, root = tmp_path / "elsewhere", tmp_path / "ws"
    outside.mkdir()
    root.mkdir()
    (root / "reports").symlink_to(outside, target_is_directory=True)
    schedule = {"name": "m", "cron": "0 7 * * *", "timezone": "Europe/London"}
    schedule["report"] = "reports/r.md"
    st = make_settings({**schedule, "report_outside_workspace": allowed})
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 1, 8), root=root)
    sqlite_store.write_sync(schedules.fire_due, st, at(2024, 6, 2, 7, 0, 5), root=root)
    assert (outside / "r.md").exists() == allowed
    bad = ScheduleConfig(name="x", cron="0 7 * * *", report="/etc/cron.daily/r")
    problems = validate_schedules(Settings(schedules=[bad]))
    assert [p.field for p in problems] == ["schedules[0].report"]
