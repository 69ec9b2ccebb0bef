"""The worker: claims tasks, runs them in N slots, heartbeats leases, drains on SIGTERM.

Start-up takes a fresh epoch (a ``workers`` row). Tasks leased by workers known to be dead
(stopped, silent for two lease periods, or a vanished process on this host) are taken back at
once, and their in-flight calls are recorded in the ledger as *unsettled*.

Shutdown: the first SIGTERM/SIGINT stops claiming and lets running tasks finish for up to
``worker.grace_s``; what is left is cancelled and its leases released, so another worker
takes it at once. A second signal exits immediately.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskGroup
from sqlalchemy import Connection

from . import clock, ledger, schedules
from .errors import LeaseLost
from .loop import State, TaskRunner, claim
from .runtime import Runtime
from .store import queue, workers
from .store.queue import Task

log = structlog.get_logger("harness.worker")

MAINTENANCE_EVERY_S = 5.0


@dataclass
class Worker:
    rt: Runtime
    concurrency: int = 4
    until_idle: bool = False
    run_id: int | None = None  # only work on this run's tasks (``harness run``)
    stop_when: Callable[[], Awaitable[bool]] | None = None
    handle_signals: bool = True
    id: int = 0
    _running: dict[int, anyio.CancelScope] = field(default_factory=dict)
    _stopping: anyio.Event = field(default_factory=anyio.Event)
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _last_maintenance: float = 0.0

    async def run(self) -> None:
        """Work until stopped (signal, ``stop_when`` or, with ``until_idle``, no work left)."""
        st = self.rt.store
        self.id = await st.write(workers.register_worker, self.concurrency)
        log.info("worker_started", worker_id=self.id, concurrency=self.concurrency, pid=os.getpid())
        await self.maintain(force=True)
        try:
            async with anyio.create_task_group() as tg:
                if self.handle_signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope)
                tg.start_soon(self._heartbeat)
                await self._dispatch(tg)
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await st.write(workers.stop_worker, self.id)
            log.info("worker_stopped", worker_id=self.id)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # -- claiming ----------------------------------------------------------------------------

    async def _dispatch(self, tg: TaskGroup) -> None:
        lease_s = self.rt.settings.worker.lease_s
        idle_max = self.rt.settings.worker.idle_poll_max_s
        delay = 0.01
        while not self._stopping.is_set():
            await self.maintain()
            if self.stop_when is not None and await self.stop_when():
                break
            free = self.concurrency - len(self._running)
            claimed: list[tuple[Task, State]] | None = []
            claim_id = self.id
            if free > 0:
                try:
                    claimed = await self.rt.store.write(_claim, self.id, lease_s, free, self.run_id)
                except Exception:  # the database restarting, a lock timeout: back off, go on
                    log.exception("worker_claim_failed")
                    claimed = []
                    await anyio.sleep(min(delay * 10, idle_max))
            if claimed is None:
                await self._new_epoch(seen_dead=claim_id)
                continue
            for task, state in claimed:
                if task.id in self._running:  # never two runners of one task
                    self._running[task.id].cancel()
                scope = anyio.CancelScope()
                self._running[task.id] = scope
                tg.start_soon(self._work, task, state, scope)
            if claimed:
                delay = 0.01
                continue
            if self.until_idle and not self._running and not await self._has_work():
                break
            self._wake = anyio.Event()
            with anyio.move_on_after(delay):
                await self._wake.wait()
            delay = min(delay * 2, idle_max)

    async def _has_work(self) -> bool:
        return await self.rt.store.read(queue.has_runnable, self.run_id)

    async def _work(self, task: Task, state: State, scope: anyio.CancelScope) -> None:
        bound = log.bind(run_id=task.run_id, task_id=task.id, agent=task.agent, worker_id=self.id)
        bound.info("task_claimed", attempt=task.attempts)
        self.rt.emit("task_started", task=task, worker_id=self.id)
        status = None
        try:
            with scope:
                status = await TaskRunner(self.rt, task, self.id, state).run()
        except Exception:  # the loop never dies on a task's exception
            bound.exception("task_crashed")
            with anyio.CancelScope(shield=True), suppress(LeaseLost):
                await self.rt.store.write(
                    queue.fail,
                    task,
                    self.id,
                    "internal error (see worker log)",
                    retry=True,
                    backoff_s=self.rt.settings.worker.retry_backoff_s,
                )
        finally:
            self.rt.emit("task_finished", task=task, status=status)
            current = self._running.get(task.id) is scope
            if current:
                del self._running[task.id]
            # a runner superseded by a re-claim of its task must not release the new claim
            if current and status is None and scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await self._release(task, "worker shutting down")
            self._wake.set()

    async def _release(self, task: Task, reason: str) -> None:
        try:
            await self.rt.store.write(queue.release, task.id, self.id, reason)
            log.info("task_released", task_id=task.id, reason=reason)
        except LeaseLost:
            pass

    # -- leases, maintenance, shutdown -------------------------------------------------------

    async def _heartbeat(self) -> None:
        lease_s = self.rt.settings.worker.lease_s
        while True:
            await anyio.sleep(lease_s / 3)
            snapshot = dict(self._running)
            beat_id = self.id
            try:
                owned = await self.rt.store.write(_beat, beat_id, list(snapshot), lease_s)
            except Exception:  # e.g. the database restarting: keep beating
                log.exception("worker_heartbeat_failed")
                continue
            if owned is None:
                await self._new_epoch(seen_dead=beat_id)
                continue
            for task_id in set(snapshot) - owned:
                scope = snapshot[task_id]
                if self._running.get(task_id) is scope:  # cancelled run, or lease taken over
                    log.warning("task_lease_lost", task_id=task_id)
                    scope.cancel()

    async def _new_epoch(self, seen_dead: int) -> None:
        """This worker was declared dead (paused or cut off past two leases): its tasks
        were taken back, so stop working on them and carry on under a fresh id. A late
        answer about an epoch already replaced (``seen_dead`` is not ours now) is ignored."""
        if seen_dead != self.id:
            return
        log.warning("worker_declared_dead", worker_id=self.id, running=len(self._running))
        for scope in self._running.values():
            scope.cancel()
        self.id = await self.rt.store.write(workers.register_worker, self.concurrency)
        log.info("worker_started", worker_id=self.id, concurrency=self.concurrency, pid=os.getpid())

    async def maintain(self, *, force: bool = False) -> None:
        """Take back orphaned work, wake parents and paused tasks. Cheap, indexed queries."""
        t = time.monotonic()
        if not force and t - self._last_maintenance < MAINTENANCE_EVERY_S:
            return
        self._last_maintenance = t
        self.rt.reload_team()
        stale_after = self.rt.settings.worker.lease_s * 2
        try:
            n = await self.rt.store.write_in_thread(_maintain, self.rt, stale_after, self.id)
        except Exception:  # a database hiccup must not stop the worker; try again later
            log.exception("worker_maintenance_failed")
            return
        if n:
            log.info("worker_maintenance", touched=n)

    async def _drain(self) -> None:
        if not self._running:
            return
        grace = self.rt.settings.worker.grace_s
        log.info("worker_draining", running=len(self._running), grace_s=grace)
        with anyio.move_on_after(grace):
            while self._running:
                await anyio.sleep(0.05)
        for scope in list(self._running.values()):
            scope.cancel()
        with anyio.move_on_after(10):
            while self._running:
                await anyio.sleep(0.02)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping.is_set():
                    log.warning("worker_killed", signal=signum)
                    os._exit(130)
                log.info("worker_stopping", signal=signum)
                self.stop()


def _beat(conn: Connection, worker_id: int, ids: list[int], lease_s: float) -> set[int] | None:
    """Heartbeat and lease renewal; the ids still owned, or None when declared dead."""
    if not workers.beat_worker(conn, worker_id):
        return None
    return queue.heartbeat(conn, worker_id, ids, lease_s)


def _claim(
    conn: Connection, worker_id: int, lease_s: float, limit: int, run_id: int | None
) -> list[tuple[Task, State]] | None:
    """Claim (with each task's state) under this worker's id, unless it was declared dead
    (None)."""
    if not workers.is_alive(conn, worker_id):
        return None
    return claim(conn, worker_id, lease_s, limit, run_id=run_id)


def _maintain(conn: Connection, rt: Runtime, stale_after_s: float, me: int) -> int:
    # never ourselves: a late heartbeat of our own is no reason to take back our work
    dead = [w for w in workers.dead_workers(conn, stale_after_s) if w != me]
    n = ledger.settle_orphans(conn, rt.settings, dead)
    n += queue.reap_expired(conn, dead, exclude=me)
    workers.mark_stopped(conn, dead)
    n += queue.wake_waiting(conn)
    team, settings = rt.team, rt.settings
    keys = {a: team[a].budget_key(settings) for a in queue.paused_agents(conn) if a in team}
    n += queue.requeue_paused(conn, keys)
    budgets = {name: team[name].budget(settings) for name in team.names()}
    n += len(
        schedules.fire_due(conn, rt.settings, clock.now(), root=rt.workspace.root, budgets=budgets)
    )
    return n
