"""The worker: survives task crashes, drains on SIGTERM, hands work over when a worker dies.

Process tests run ``harness worker`` (the console script) on a temp workspace against a fake
server subprocess (``python -m harness.fakeserver``), configured through ``HARNESS_*`` env.
The helpers here are shared with ``tests/test_chaos.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, func, select

from harness import ledger, queue, store
from harness.schema import TaskStatus, calls, messages, reservations, tasks, usage_daily
from harness.settings import load_workspace
from harness.store import Store
from harness.testing import ScriptedProvider
from harness.usage import CallOutcome
from harness.worker import Worker
from tests.helpers import runtime, submit, work

HARNESS = Path(sys.executable).with_name("harness")


# -- process helpers (shared with test_chaos) ---------------------------------------------------


@dataclass
class FakeProc:
    """A fake server subprocess."""

    proc: subprocess.Popen[str]
    url: str  # base URL, ending in /v1

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/stats", timeout=5).json())

    def reset(self, **knobs: Any) -> None:
        httpx.post(self.url + "/reset", json=knobs, timeout=5).raise_for_status()


@dataclass
class Procs:
    """Starts fake servers and workers; stops whatever is left at the end of the test."""

    tmp: Path
    started: list[subprocess.Popen[Any]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)

    def fake(self, *args: str) -> FakeProc:
        cmd = [sys.executable, "-m", "harness.fakeserver", "--port", "0", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        return FakeProc(proc, f"http://{line.split()[1]}/v1")

    def worker(
        self, ws: Path, fake: FakeProc, *args: str, **settings: Any
    ) -> subprocess.Popen[bytes]:
        """``harness worker ARGS`` on ``ws``; ``settings`` as env, e.g. ``worker__grace_s=1``."""
        n = len(self.logs)
        log = self.tmp / f"worker-{n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(HARNESS), "-w", str(ws), "--log-json", "worker", *args],
                env=worker_env(fake.url, **settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        self.logs[proc.pid] = log
        return proc

    def events(self, proc: subprocess.Popen[Any]) -> list[dict[str, Any]]:
        """The JSON log events a worker wrote so far."""
        out = []
        for line in self.logs[proc.pid].read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def worker_env(base_url: str, **settings: Any) -> dict[str, str]:
    """The environment of a worker process: no inherited HARNESS_* settings, the fake server
    as the default model's provider, quick retries; ``settings`` as ``HARNESS_<KEY>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env |= {
        "HARNESS_BASE_URL": base_url,
        "HARNESS_LOCAL__AUTOSTART": "false",
        "HARNESS_WORKER__RETRY_BACKOFF_S": "0.2",
        "HARNESS_PROVIDERS__LOCAL__BACKOFF_BASE_S": "0.05",
        "HARNESS_PROVIDERS__LOCAL__BACKOFF_MAX_S": "0.5",
    }
    env |= {f"HARNESS_{key.upper()}": str(value) for key, value in settings.items()}
    return env


def open_store(ws: Path) -> Store:
    """The workspace's database (created and migrated here, before any worker starts)."""
    return Store.open(f"sqlite:///{ws / 'var' / 'harness.db'}")


def enqueue(st: Store, goal: str, agent: str = "arnold", max_attempts: int = 3) -> int:
    """Submit a run; returns its root task id."""
    _run_id, task_id = st.write_sync(queue.create_run, goal, agent, max_attempts=max_attempts)
    return task_id


def get_task(st: Store, task_id: int) -> queue.Task:
    task = st.read_sync(queue.get_task, task_id)
    assert task is not None
    return task


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


def count(st: Store, table: Any, *where: Any) -> int:
    return int(
        st.read_sync(
            lambda c: c.execute(select(func.count()).select_from(table).where(*where)).scalar()
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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    budget = ledger.Budget()
    return int(
        st.write_sync(
            lambda c: ledger.reserve(
                c,
                ctx,
                model="local",
                provider="local",
                tokens=500,
                cost=0.0,
                budget=budget,
                workspace_budget=budget,
                day=day,
            )
        )
    )


def test_a_late_answer_from_a_worker_declared_dead_is_charged_once(workspace_dir: Path) -> None:
    from harness.usage import CallRecord, Usage

    settings = load_workspace(workspace_dir).settings
    st = open_store(workspace_dir)
    task_id = enqueue(st, "question", "veblen")
    worker_id = st.write_sync(store.register_worker, 1)
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
    a = st.write_sync(store.register_worker, 1)
    b = st.write_sync(store.register_worker, 1)
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
            await rt.store.write(store.mark_stopped, [w.id])
            _, second = await submit(rt, "second", "veblen")
            await _wait_running(rt, second)
            owner = await rt.store.read(
                lambda c: c.execute(
                    select(tasks.c.lease_owner).where(tasks.c.id == second)
                ).scalar()
            )
            dead = await rt.store.read(store.dead_workers, 0.6)
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
        store.beat_worker(conn, worker_id)  # alive, but its lease extensions land too late
        return set(ids)

    monkeypatch.setattr(worker_module, "_beat", late_beat)
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("ok", delay_s=1.0))
    _, task_id = await submit(rt, "question", "veblen")
    await work(rt, concurrency=2)
    task = await rt.store.read(queue.get_task, task_id)
    await rt.aclose()
    assert task is not None and task.status == TaskStatus.DONE
    assert len(provider.requests) == 1  # the worker never ran its own task twice
