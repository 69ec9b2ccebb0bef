"""The worker: claims tasks, runs them in N slots, heartbeats leases, drains on SIGTERM.

Start-up takes a fresh epoch (a ``workers`` row). Tasks leased by workers known to be dead
(stopped, silent for two lease periods, or a vanished process) are taken back at once, and
their in-flight calls are recorded in the ledger as *unsettled*.

No transient database error kills a worker (invariant 7): claiming, heartbeats and maintenance
back off and try again; a task's end (done, failed, released) is written with
``Store.write_until_done`` and never given up on a transient error. Maintenance is a list of
duties, each in its own transaction: one that fails is logged and the others go on. Errors
that are not transient (a database file damaged under the worker) are waited out too, but
only for ``worker.db_failure_exit_s``: then the worker stops and ``run`` raises
:class:`~harness.errors.DatabaseFailing`, so a supervisor restarts it or a human sees it.

Shutdown: the first SIGTERM/SIGINT stops claiming and lets running tasks finish for up to
``worker.grace_s``; what is left is cancelled and its leases released, so another worker
takes it at once. A second signal exits immediately.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from sqlalchemy import Connection

from . import clock, ledger, schedules
from .errors import DatabaseFailing, LeaseLost
from .loop import TaskRunner, retry_backoff
from .runtime import Runtime
from .settings import ScheduleConfig
from .steps import State, claim
from .store import queue, workers
from .store.access import transient
from .store.model_stats import save_model_stats
from .store.queue import Lease, Task

log = structlog.get_logger("harness.worker")

MAINTENANCE_EVERY_S = 5.0
STARTUP_WAIT_S = 300.0  # how long a starting worker waits for a database that is down


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
    _failing_since: float | None = None  # when claims and heartbeats began to fail for good
    _fatal: BaseException | None = None

    async def run(self) -> None:
        """Work until stopped (signal, ``stop_when`` or, with ``until_idle``, no work left).
        Raises DatabaseFailing when the database kept failing (see the module's notes)."""
        st = self.rt.store
        self.id = await st.write_until_done(workers.register_worker, self.concurrency)
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
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_WRITE_S):
                await self._record_stop()
            log.info("worker_stopped", worker_id=self.id)
        if self._fatal is not None:
            raise DatabaseFailing(self._fatal_reason()) from self._fatal

    async def _record_stop(self) -> None:
        """What this worker learned of its models, and that it stopped."""
        try:
            stats = self.rt.calibration.take_changes()
            await self.rt.store.write_until_done(save_model_stats, stats)
            await self.rt.store.write_until_done(workers.stop_worker, self.id)
        except Exception:
            if self._fatal is None:
                raise
            log.warning("worker_stop_not_recorded")  # the database is why we stop

    def _fatal_reason(self) -> str:
        limit = self.rt.settings.worker.db_failure_exit_s
        url = self.rt.store.engine.url.render_as_string(hide_password=True)
        first = (str(self._fatal).splitlines() or [""])[0][:300]
        return (
            f"database {url} kept failing for {limit:g}s ({type(self._fatal).__name__}: "
            f"{first}); the worker stopped: repair or restore the database, then start it again"
        )

    def _db_failed(self, exc: Exception) -> None:
        """A claim or heartbeat failed: a transient error is waited out for as long as it
        lasts; others for ``db_failure_exit_s``, then the worker stops."""
        if transient(exc):
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self.rt.settings.worker.db_failure_exit_s:
            if self._fatal is None:
                log.error("worker_database_failing", error=f"{type(exc).__name__}: {exc}")
            self._fatal = exc
            self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # -- claiming ----------------------------------------------------------------------------

    async def _dispatch(self, tg: TaskGroup) -> None:
        idle_max = self.rt.settings.worker.idle_poll_max_s
        delay = 0.01
        while not self._stopping.is_set():
            await self.maintain()
            try:
                if self.stop_when is not None and await self.stop_when():
                    break
                claimed = await self._claim()
            except Exception as exc:  # the database restarting, a lock timeout: back off, go on
                log.exception("worker_claim_failed")
                self._db_failed(exc)
                await anyio.sleep(min(max(delay, 0.1) * 10, idle_max))
                continue
            self._failing_since = None
            if claimed:
                delay = 0.01
                for task, state in claimed:
                    self._start(tg, task, state)
                continue
            if self.until_idle and not self._running and not await self._has_work():
                break
            self._wake = anyio.Event()
            with anyio.move_on_after(delay):
                await self._wake.wait()
            delay = min(delay * 2, idle_max)

    async def _claim(self) -> list[tuple[Task, State]]:
        free = self.concurrency - len(self._running)
        if free <= 0:
            return []
        claim_id, lease_s = self.id, self.rt.settings.worker.lease_s
        claimed = await self.rt.store.write(claim, claim_id, lease_s, free, run_id=self.run_id)
        if claimed is None:
            await self._new_epoch(seen_dead=claim_id)
            return []
        return claimed

    def _start(self, tg: TaskGroup, task: Task, state: State) -> None:
        if task.id in self._running:  # never two runners of one task
            self._running[task.id].cancel()
        scope = anyio.CancelScope()
        self._running[task.id] = scope
        tg.start_soon(self._work, task, state, scope, self.id)

    async def _has_work(self) -> bool:
        try:
            return await self.rt.store.read(queue.has_runnable, self.run_id)
        except Exception:
            log.exception("worker_idle_check_failed")
            return True

    async def _work(
        self, task: Task, state: State, scope: anyio.CancelScope, worker_id: int
    ) -> None:
        bound = log.bind(run_id=task.run_id, task_id=task.id, agent=task.agent, worker_id=worker_id)
        bound.info("task_claimed", attempt=task.attempts)
        lease = Lease(task, worker_id)
        self.rt.emit("task_started", task=task, worker_id=worker_id)
        status = None
        try:
            with scope:
                status = await TaskRunner(self.rt, task, worker_id, state).run()
        except Exception:  # the loop never dies on a task's exception
            bound.exception("task_crashed")
            await self._end(lease, queue.fail, "internal error (see worker log)", bound)
        finally:
            self.rt.emit("task_finished", task=task, status=status)
            current = self._running.get(task.id) is scope
            if current:
                del self._running[task.id]
            # a runner superseded by a re-claim of its task must not release the new claim
            if current and status is None and scope.cancelled_caught:
                await self._end(lease, queue.release, "worker shutting down", bound)
            self._wake.set()

    async def _end(self, lease: Lease, move: Callable[..., Any], reason: str, bound: Any) -> None:
        """Fail (to retry) or release a task whose runner did not: written whatever the
        database does meanwhile; a lease lost since is no one's loss."""
        extra = {}
        if move is queue.fail:
            extra = {"retry": True, "backoff_s": retry_backoff(self.rt.settings.worker, 1)}
        try:
            with anyio.CancelScope(shield=True):
                await self.rt.store.write_until_done(move, lease, reason, **extra)
            bound.info("task_released" if move is queue.release else "task_failed", reason=reason)
        except LeaseLost:
            pass
        except Exception:  # not transient (a bug): the lease expires and the task comes back
            bound.exception("task_end_not_written", reason=reason)

    # -- leases, maintenance, shutdown -------------------------------------------------------

    async def _heartbeat(self) -> None:
        lease_s = self.rt.settings.worker.lease_s
        while True:
            await anyio.sleep(lease_s / 3)
            snapshot = dict(self._running)
            beat_id = self.id
            try:
                owned = await self.rt.store.write(_beat, beat_id, list(snapshot), lease_s)
            except Exception as exc:  # e.g. the database restarting: keep beating
                log.exception("worker_heartbeat_failed")
                self._db_failed(exc)
                continue
            self._failing_since = None
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
        self.id = await self.rt.store.write_until_done(workers.register_worker, self.concurrency)
        log.info("worker_started", worker_id=self.id, concurrency=self.concurrency, pid=os.getpid())

    async def maintain(self, *, force: bool = False) -> None:
        """Take back orphaned work, wake parents and paused tasks, fire schedules: each duty
        in its own transaction (in a thread: a report may take a while). A duty that fails is
        logged and the others go on; it is tried again next time."""
        t = time.monotonic()
        if not force and t - self._last_maintenance < MAINTENANCE_EVERY_S:
            return
        self._last_maintenance = t
        self.rt.reload_team()
        touched = 0
        for name, duty, args in self._duties():
            try:
                touched += await self.rt.store.write_in_thread(duty, *args)
            except Exception:  # a database hiccup, a bad row: the other duties go on
                log.exception("maintenance_duty_failed", duty=name)
        if touched:
            log.info("worker_maintenance", touched=touched)

    def _duties(self) -> list[tuple[str, Callable[..., int], tuple[Any, ...]]]:
        rt, stale_after = self.rt, self.rt.settings.worker.lease_s * 2
        duties: list[tuple[str, Callable[..., int], tuple[Any, ...]]] = [
            ("settle_orphans", _settle_orphans, (rt, stale_after, self.id)),
            ("reap_expired", _reap, (stale_after, self.id)),
            ("wake_waiting", _wake_waiting, ()),
            ("requeue_paused", _requeue_paused, (rt,)),
            ("save_model_stats", save_model_stats, (rt.calibration.take_changes(),)),
        ]
        for s in sorted(rt.settings.schedules, key=lambda s: s.name):
            duties.append((f"schedule {s.name}", _fire, (rt, s)))
        return duties

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


STOP_WRITE_S = 10.0  # how long a stopping worker tries to record that it stopped


def _beat(conn: Connection, worker_id: int, ids: list[int], lease_s: float) -> set[int] | None:
    """Heartbeat and lease renewal; the ids still owned, or None when declared dead."""
    if not workers.beat_worker(conn, worker_id):
        return None
    return queue.heartbeat(conn, worker_id, ids, lease_s)


# -- maintenance duties: one transaction each ------------------------------------------------


def _dead(conn: Connection, stale_after_s: float, me: int) -> list[int]:
    # never ourselves: a late heartbeat of our own is no reason to take back our work
    return [w for w in workers.dead_workers(conn, stale_after_s) if w != me]


def _settle_orphans(conn: Connection, rt: Runtime, stale_after_s: float, me: int) -> int:
    return ledger.settle_orphans(conn, rt.settings, _dead(conn, stale_after_s, me))


def _reap(conn: Connection, stale_after_s: float, me: int) -> int:
    dead = _dead(conn, stale_after_s, me)
    n = queue.reap_expired(conn, dead, exclude=me)
    workers.mark_stopped(conn, dead)
    return n


def _wake_waiting(conn: Connection) -> int:
    return queue.wake_waiting(conn)


def _requeue_paused(conn: Connection, rt: Runtime) -> int:
    team, settings = rt.team, rt.settings
    keys = {a: team[a].budget_key(settings) for a in queue.paused_agents(conn) if a in team}
    return queue.requeue_paused(conn, keys)


def _fire(conn: Connection, rt: Runtime, schedule: ScheduleConfig) -> int:
    team, settings = rt.team, rt.settings
    budgets = {name: team[name].budget(settings) for name in team.names()}
    root = rt.workspace.root
    return len(
        schedules.fire_due(conn, settings, clock.now(), root=root, budgets=budgets, only=schedule)
    )
