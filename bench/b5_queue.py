"""B5: queue transitions (enqueue -> claim -> complete), one at a time and in batches, on
SQLite and PostgreSQL, against raw sqlite3 / psycopg doing the same transitions."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import Section, Sizes, interleave, log, metric, ratios, verdict

GOAL = "a queued goal"
AGENT = "veblen"
LEASE_S = 60.0
PG_ADMIN = os.environ.get("HARNESS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")

ENQUEUE = [
    "INSERT INTO runs (goal, agent, schedule, created_at, calls, prompt_tokens, cached_tokens, "
    "completion_tokens, reasoning_tokens, cost_usd, estimated_calls) "
    "VALUES (?, ?, NULL, ?, 0, 0, 0, 0, 0, 0, 0) RETURNING id",
    "INSERT INTO tasks (run_id, agent, input, status, priority, depth, attempts, max_attempts, "
    "not_before, steps, created_at, updated_at) "
    "VALUES (?, ?, ?, 'queued', 0, 0, 0, 3, 0, 0, ?, ?) RETURNING id",
    "UPDATE runs SET root_task_id=? WHERE id=?",
]
PICK = (
    "SELECT id FROM tasks WHERE status='queued' AND not_before<=? "
    "ORDER BY priority DESC, id LIMIT ?"
)
CLAIM_SET = (
    "SET status='running', lease_owner=?, lease_expires_at=?, attempts=attempts+1, "
    "started_at=coalesce(started_at, ?), updated_at=?, status_reason=NULL"
)
COMPLETE = (
    "UPDATE tasks SET status='done', result=?, error=NULL, updated_at=?, finished_at=?, "
    "lease_owner=NULL, lease_expires_at=NULL WHERE id=? AND status='running' AND lease_owner=?"
)
PARENT = "SELECT parent_id FROM tasks WHERE id=?"


class RawQueue:
    """The same statements as ``harness.store.queue`` by hand, one transaction per transition."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self.conn = conn
        self.pg = postgres
        self.worker_id = 1

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def _x(self, sql: str, args: tuple[Any, ...]) -> Any:
        return self.conn.execute(self._sql(sql), args)

    def _tx(self, fn: Callable[[], Any]) -> Any:
        if self.pg:
            try:
                out = fn()
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()
            return out
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return out

    def _enqueue_one(self) -> int:
        t = time.time()
        run_id = self._x(ENQUEUE[0], (GOAL, AGENT, t)).fetchone()[0]
        task_id = self._x(ENQUEUE[1], (run_id, AGENT, GOAL, t, t)).fetchone()[0]
        self._x(ENQUEUE[2], (task_id, run_id))
        return int(task_id)

    def _claim(self, limit: int) -> list[tuple[Any, ...]]:
        t = time.time()
        args = (self.worker_id, t + LEASE_S, t, t)
        if self.pg:
            ids = [r[0] for r in self._x(PICK + " FOR UPDATE SKIP LOCKED", (t, limit))]
            if not ids:
                return []
            sql = (
                f"UPDATE tasks {CLAIM_SET} WHERE id = ANY(?) AND status='queued' "
                "AND not_before<=? RETURNING *"
            )
            return list(self._x(sql, (*args, ids, t)).fetchall())
        sql = f"UPDATE tasks {CLAIM_SET} WHERE id IN ({PICK}) RETURNING *"
        return list(self._x(sql, (*args, t, limit)).fetchall())

    def _complete(self, task_id: int) -> None:
        t = time.time()
        cur = self._x(COMPLETE, ("ok", t, t, task_id, self.worker_id))
        assert cur.rowcount == 1
        self._x(PARENT, (task_id,)).fetchone()

    def one(self) -> None:
        self._tx(self._enqueue_one)
        [row] = self._tx(lambda: self._claim(1))
        self._tx(lambda: self._complete(row[0]))

    def batch(self, size: int) -> None:
        self._tx(lambda: [self._enqueue_one() for _ in range(size)])
        rows = self._tx(lambda: self._claim(size))
        assert len(rows) == size
        self._tx(lambda: self._complete_all(rows))

    def _complete_all(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            self._complete(row[0])


class HarnessQueue:
    """``harness.store.queue`` through a ``Store``: ``write`` (as the worker runs it) or
    ``write_sync`` (the caller's thread, like the raw arm)."""

    def __init__(self, store: Any) -> None:
        from harness.store import workers

        self.store = store
        self.worker_id = store.write_sync(workers.register_worker, 1)

    @staticmethod
    def _enqueue(conn: Any, n: int) -> None:
        from harness.store import queue

        for _ in range(n):
            queue.create_run(conn, GOAL, AGENT, max_attempts=3)

    @staticmethod
    def _complete_all(conn: Any, tasks: list[Any], worker_id: int) -> None:
        from harness.store import queue

        for task in tasks:
            queue.complete(conn, queue.Lease(task, worker_id), "ok")

    async def one(self, threaded: bool) -> None:
        from harness.store import queue

        w = self.store.write if threaded else _sync(self.store.write_sync)
        await w(queue.create_run, GOAL, AGENT, max_attempts=3)
        [task] = await w(queue.claim, self.worker_id, LEASE_S, 1)
        await w(queue.complete, queue.Lease(task, self.worker_id), "ok")

    async def batch(self, size: int, threaded: bool) -> None:
        from harness.store import queue

        w = self.store.write if threaded else _sync(self.store.write_sync)
        await w(self._enqueue, size)
        tasks = await w(queue.claim, self.worker_id, LEASE_S, size)
        assert len(tasks) == size
        await w(self._complete_all, tasks, self.worker_id)


def _sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return call


def _arms(
    h: HarnessQueue, raw: RawQueue, sizes: Sizes, batch: bool, never: HarnessQueue | None
) -> dict[str, Any]:
    n, b, nb = sizes.b5_tasks, sizes.b5_batch, sizes.b5_batches

    def timed(fn: Callable[[], Any], count: int) -> Any:
        async def run() -> dict[str, float]:
            t0 = time.perf_counter()
            await fn()
            return {"tasks_per_s": count / (time.perf_counter() - t0)}

        return run

    async def raw_run() -> None:
        for _ in range(nb if batch else n):
            raw.batch(b) if batch else raw.one()

    def harness_run(threaded: bool, q: HarnessQueue = h) -> Callable[[], Any]:
        async def go() -> None:
            for _ in range(nb if batch else n):
                await (q.batch(b, threaded) if batch else q.one(threaded))

        return go

    count = b * nb if batch else n
    arms = {
        "raw": timed(raw_run, count),
        "harness": timed(harness_run(True), count),
        "harness (write_sync)": timed(harness_run(False), count),
    }
    if never is not None:  # behind a pooler in transaction mode (docs/configuration.md)
        arms[NEVER] = timed(harness_run(True, never), count)
    return arms


NEVER = "harness, ?prepare_threshold=none"


def _pg_database(name: str, create: bool) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        if create:
            admin.execute(f'CREATE DATABASE "{name}"')
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def _backend(sizes: Sizes, backend: str, tmp: Path, s: Section) -> None:
    from harness.store import Store

    names: list[str] = []
    never: Any = None
    if backend == "sqlite":
        h_url, r_path = f"sqlite:///{tmp / 'h.db'}", tmp / "r.db"
        Store.open(f"sqlite:///{r_path}").close()
        conn: Any = sqlite3.connect(r_path, isolation_level=None)
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            conn.execute(f"PRAGMA {pragma}")
    else:
        import psycopg

        base = f"harness_bench_{os.getpid()}"
        names = [base + "_h", base + "_r", base + "_n"]
        h_url = _pg_database(names[0], True).replace("postgresql://", "postgresql+psycopg://")
        r_url = _pg_database(names[1], True)
        n_url = _pg_database(names[2], True).replace("postgresql://", "postgresql+psycopg://")
        never = Store.open(n_url + "?prepare_threshold=none")
        Store.open(r_url.replace("postgresql://", "postgresql+psycopg://")).close()
        conn = psycopg.connect(r_url)
    store = Store.open(h_url)
    try:
        h, raw = HarnessQueue(store), RawQueue(conn, backend == "postgres")
        n = None if never is None else HarnessQueue(never)
        for batch in (False, True):
            mode = f"batches of {sizes.b5_batch}" if batch else "one at a time"
            log(f"B5: {backend}, {mode}")
            res = await interleave(_arms(h, raw, sizes, batch, n), sizes.rounds)
            _rows(s, res, backend, mode, one_at_a_time=not batch)
    finally:
        store.close()
        conn.close()
        if never is not None:
            never.close()
        for name in names:
            _pg_database(name, False)


def _rows(s: Section, res: dict[str, Any], backend: str, mode: str, one_at_a_time: bool) -> None:
    raw = metric(res, "raw", "tasks_per_s")
    for arm in ("harness", "harness (write_sync)"):
        r = ratios(res, arm, "raw", "tasks_per_s")
        rate = metric(res, arm, "tasks_per_s")
        judged = arm == "harness"
        s.add(
            f"{backend}, {mode}: {arm} / raw",
            r.fmt() + "x",
            ">= 0.5x" if judged else "",
            verdict(r.median >= 0.5) if judged else "",
            f"{rate.median:,.0f} vs {raw.median:,.0f} tasks/s",
        )
    if NEVER in res:
        r = ratios(res, NEVER, "harness", "tasks_per_s")
        rate = metric(res, NEVER, "tasks_per_s")
        s.add(
            f"{backend}, {mode}: never prepare / harness",
            r.fmt() + "x",
            context=f"{rate.median:,.0f} tasks/s; what `?prepare_threshold=none` (for a pooler "
            "in transaction mode) costs a direct connection: psycopg prepares nothing",
        )
    if backend == "sqlite" and one_at_a_time:
        rate = metric(res, "harness", "tasks_per_s")
        s.add(
            "sqlite, one at a time: harness tasks/s",
            rate.fmt(0),
            ">= 2,000",
            verdict(rate.median >= 2000),
            "through `Store.write` (inline on an idle SQLite file, as the worker runs it)",
        )


async def run(sizes: Sizes) -> Section:
    s = Section(
        "B5",
        "queue: enqueue -> claim -> complete",
        f"Per round: {sizes.b5_tasks} tasks one at a time (three transactions each: enqueue, "
        f"claim, complete), or {sizes.b5_batches} batches of {sizes.b5_batch} (one transaction "
        f"per step for the whole batch); {sizes.rounds} rounds, arms interleaved, each arm on "
        "its own database (same migrated schema). harness = `harness.store.queue` functions "
        "through `Store.write` (as the worker calls them: inline on an idle SQLite file, in a "
        "worker thread on PostgreSQL); `write_sync` runs them in the caller's thread like the raw "
        "arm. Raw = the same statements with sqlite3 / psycopg 3. PostgreSQL: the local "
        "server, a fresh database per arm; one more harness arm there with "
        "`?prepare_threshold=none` in its URL (psycopg never prepares statements on the "
        "server, as behind PgBouncer in transaction mode).",
    )
    with tempfile.TemporaryDirectory(prefix="harness-b5-") as tmp:
        await _backend(sizes, "sqlite", Path(tmp), s)
    try:
        await _backend(sizes, "postgres", Path("."), s)
    except Exception as exc:  # the server is not running: say so, measure the rest
        s.add("postgres", "not measured", context=f"{type(exc).__name__}: {exc}"[:200])
    return s
