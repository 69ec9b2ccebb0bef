"""Async access to the database: transactions off the event loop, the schema kept current.

``Store.write(fn, *args)`` runs ``fn(conn, *args)`` in one write transaction without blocking
the event loop; ``Store.read`` does the same in a read-only transaction. Queue transitions
(``store.queue``) and ledger writes (``harness.ledger``) are plain functions of a connection,
so several of them compose into one transaction (a model step's message, its ledger rows and
its roll-ups).

Where the work runs. A transaction on PostgreSQL waits on the network, so it runs in a worker
thread. A transaction on a SQLite file is CPU work in this process, except when it must wait
for another writer's lock, or flush the WAL to the database file (a checkpoint). So on SQLite
the store first tries the transaction on the calling (event loop) thread, on a connection of
its own that never waits (``busy_timeout=0``) and makes no automatic checkpoints. When a lock
is taken (at ``BEGIN IMMEDIATE``, or, rarely, later: the transaction is then rolled back) it
runs the transaction in a worker thread, which waits as usual; so a transaction function may
run twice and must act only through its connection. Checkpoints run in a worker thread every
``CHECKPOINT_EVERY`` inline commits. A thread hop costs more than a typical transaction
(about 150 us against 50-150 us on this machine, ``docs/benchmarks.md``), so this halves the
store's share of an agent step.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from datetime import datetime
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from .. import logs
from ..settings import DATABASE_THREADS, Workspace
from . import engine as db
from .artifacts import get_artifact
from .notes import add_note, find_notes

P = ParamSpec("P")
T = TypeVar("T")

#: A transaction function: ``fn(conn, *args, **kwargs)``, run by ``Store.write``/``read``.
TxFn = Callable[Concatenate[Connection, P], T]


CHECKPOINT_EVERY = 500  # inline SQLite commits between two checkpoints (in a thread)
WAL_LIMIT_BYTES = db.WAL_LIMIT_BYTES
RETRY_MAX_DELAY_S = 5.0  # the longest wait between two tries of a write that must not be lost

log = logs.get_logger("harness.store")

#: True while ``Store.write_until_done`` runs a write again after a transient error. The
#: earlier try may have committed (a connection dropped at COMMIT leaves its outcome
#: unknown): writes that must apply once look for what that try wrote (see ``ledger`` and
#: ``steps``). The store's threads see it too (each transaction runs in a copy of the caller's
#: context).
RETRYING: ContextVar[bool] = ContextVar("harness_store_retrying", default=False)


def _driver_transient() -> tuple[type[BaseException], ...]:
    """psycopg's own transient errors; none before it is loaded (none can be raised then,
    and a SQLite process never pays for importing it)."""
    psycopg = sys.modules.get("psycopg")
    return () if psycopg is None else (psycopg.OperationalError, psycopg.InterfaceError)


def transient(exc: BaseException) -> bool:
    """A database error worth waiting out: the server unreachable or restarting, a dropped
    connection, a deadlock or serialization victim (PostgreSQL rolled it back), SQLite busy
    or locked past its timeout, a prepared statement a pooler lost (``Store`` then prepares
    none). Not: constraint violations, missing tables, corruption."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if db.lost_prepared_statement(exc):  # behind a pooler: the store then stops preparing
        return True
    if isinstance(exc, sqlite3.OperationalError) or (
        isinstance(exc, OperationalError) and isinstance(exc.orig, sqlite3.OperationalError)
    ):
        return _locked(exc)
    return isinstance(exc, (OperationalError, InterfaceError, *_driver_transient()))


def _wait_until_up(url: str, wait_s: float) -> None:
    """Return once the server at ``url`` answers, or on an error not worth waiting out, or
    after ``wait_s`` (what :func:`harness.store.engine.open_engine` then meets it reports)."""
    engine = db.make_engine(url)
    deadline, tries = time.monotonic() + wait_s, 0
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except Exception as exc:
                tries += 1
                if not transient(exc) or time.monotonic() >= deadline:
                    return
                delay = min(RETRY_MAX_DELAY_S, 0.05 * 2**tries)
                log.warning("store_open_retry", tries=tries, delay_s=delay, error=_line(exc))
                time.sleep(delay)
    finally:
        engine.dispose()


def _line(exc: BaseException) -> str:
    """An error as one short line for a log event."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


class _Busy(Exception):
    """The inline connection met a lock; the caller goes to a thread."""


def _locked(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (another connection holds what is needed)."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _transact(
    conn: Connection, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:  # (the public methods check fn against its arguments; this runs any of them)
    """``fn(conn, ...)`` in the transaction open on ``conn``'s driver, then commit; roll
    back on any exception. Hot-path statements (``db.run``) run on the driver; SQLAlchemy
    joins the transaction only if a Core statement ran, and then ends it itself."""
    driver = db.driver(conn)
    try:
        out = fn(conn, *args, **kwargs)
        conn.commit() if conn.in_transaction() else driver.commit()
    except BaseException:  # a failed COMMIT too: the connection must not keep the lock
        _roll_back(conn, driver)
        raise
    return out


def _roll_back(conn: Connection, driver: Any) -> None:
    """Roll back; a connection the server or the network dropped (psycopg marks it broken,
    or the rollback fails) is thrown away instead, so the next try gets a fresh one."""
    try:
        if getattr(driver, "broken", False):
            raise ConnectionError("broken connection")
        conn.rollback() if conn.in_transaction() else driver.rollback()
    except Exception:
        conn.invalidate()


class Store:
    """Async facade over a SQLAlchemy engine (SQLite file or PostgreSQL)."""

    def __init__(self, engine: Engine, *, threads: int = DATABASE_THREADS) -> None:
        self.engine = engine
        # the transactions run in threads: ``threads`` at once, write_in_thread's (which may
        # run long) in a lane of their own
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="harness-db")
        self._slow_lane = ThreadPoolExecutor(1, thread_name_prefix="harness-db-slow")
        url = engine.url
        self._sqlite = url.get_backend_name() == "sqlite"
        self._inline = self._sqlite and url.database not in (
            None,
            "",
            ":memory:",
        )
        self._local = threading.local()  # each event loop thread's inline connection
        self._inline_conns: list[Connection] = []
        self._lock = threading.Lock()
        self._commits = 0

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = True, wait_s: float = 0.0, threads: int = DATABASE_THREADS
    ) -> Store:
        """Connect to ``url`` and (by default) apply pending migrations. A database that
        cannot be used (unreachable, damaged, read-only, an empty file) is a ConfigError
        saying what to do (see :func:`harness.store.engine.open_engine`). With ``wait_s``, a
        database server that is down or restarting (:func:`transient`) is waited for that
        long first. ``threads``: how many transactions run in threads at once (the setting
        ``database_threads``)."""
        if wait_s > 0 and db.sqlite_path(url) is None:
            _wait_until_up(url, wait_s)
        return cls(db.open_engine(url, migrate=migrate), threads=threads)

    @classmethod
    def open_workspace(cls, workspace: Workspace, *, wait_s: float = 0.0) -> Store:
        """The store of ``workspace``: its database, with its ``database_threads``."""
        threads = workspace.settings.database_threads
        return cls.open(workspace.database_url(), wait_s=wait_s, threads=threads)

    def close(self) -> None:
        with self._lock:
            conns, self._inline_conns = self._inline_conns, []
        for conn in conns:
            conn.close()
        for lane in (self._threads, self._slow_lane):
            lane.shutdown(wait=False)  # idle by now: nothing waits for their transactions
        self.engine.dispose()

    # -- running work off the event loop --------------------------------------------------

    def write_sync(self, fn: TxFn[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(conn, *args)`` in one write transaction in this thread (waiting for
        SQLite's write lock up to its busy timeout)."""
        try:
            return self._write_once(fn, args, kwargs)
        except Exception as exc:
            if not self._stopped_preparing(exc):
                raise
        return self._write_once(fn, args, kwargs)

    def _write_once(self, fn: Callable[..., T], args: Any, kwargs: dict[str, Any]) -> T:
        with self.engine.connect() as conn:
            if self._sqlite:
                db.driver(conn).execute("BEGIN IMMEDIATE")
                return _transact(conn, fn, args, kwargs)
            db.begin_with_first_statement(conn)
            try:
                return _transact(conn, fn, args, kwargs)
            finally:
                db.forget_begin(conn)

    def read_sync(self, fn: TxFn[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with db.read(self.engine) as conn:
                return fn(conn, *args, **kwargs)
        except Exception as exc:
            if not self._stopped_preparing(exc):
                raise
        with db.read(self.engine) as conn:
            return fn(conn, *args, **kwargs)

    def _stopped_preparing(self, exc: Exception) -> bool:
        """True when ``exc`` is a prepared statement the server does not have (or has twice):
        a pooler in transaction mode without ``?prepare_threshold=none`` in the URL. Then
        this store prepares no more statements (said once, in the log) and the transaction,
        rolled back, runs again."""
        if not db.lost_prepared_statement(exc):
            return False
        if db.stop_preparing(self.engine):
            log.warning(
                "database_stopped_preparing",
                database=self.engine.url.render_as_string(hide_password=True),
                error=_line(exc),
                advice="behind a pooler in transaction mode (PgBouncer before 1.21), add "
                "?prepare_threshold=none to database_url: harness prepares nothing from now on",
            )
        return True

    async def write(self, fn: TxFn[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(conn, *args)`` in one write transaction (inline on an idle SQLite file,
        else in a worker thread)."""
        if self._inline:
            try:
                out = self._inline_tx(True, fn, args, kwargs)
            except _Busy:
                pass
            else:
                self._commits += 1
                if self._commits >= CHECKPOINT_EVERY:
                    self._commits = 0
                    await self._in_lane(self._threads, self._checkpoint)
                return out
        return await self._in_thread(self.write_sync, fn, args, kwargs)

    async def write_until_done(self, fn: TxFn[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``write``, tried again while the database has a transient problem (see
        :func:`transient`), waiting up to ``RETRY_MAX_DELAY_S`` between tries: for writes that
        must not be lost (an answer received, a task's end). Other errors propagate; so does
        cancellation (shield the call to outlast it). A try after the first runs with
        :data:`RETRYING` set."""
        tries = 0
        while True:
            token = RETRYING.set(tries > 0)
            try:
                return await self.write(fn, *args, **kwargs)
            except Exception as exc:
                if not transient(exc):
                    raise
                tries += 1
                delay = min(RETRY_MAX_DELAY_S, 0.05 * 2**tries) * (0.5 + random.random() / 2)
                log.warning(
                    "store_write_retry",
                    write=getattr(fn, "__name__", "?"),
                    tries=tries,
                    delay_s=round(delay, 3),
                    error=_line(exc),
                )
                await anyio.sleep(delay)
            finally:
                RETRYING.reset(token)

    async def write_in_thread(self, fn: TxFn[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``write``, but always in a worker thread: for transactions that may run long
        (the worker's maintenance, which can write a morning report), never on the loop. They
        take turns in a lane of their own, so a long one holds up no step."""
        return await self._in_thread(self.write_sync, fn, args, kwargs, self._slow_lane)

    async def read(self, fn: TxFn[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._inline:
            try:
                return self._inline_tx(False, fn, args, kwargs)
            except _Busy:
                pass
        return await self._in_thread(self.read_sync, fn, args, kwargs)

    async def _in_thread(
        self,
        sync: Callable[..., T],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        lane: ThreadPoolExecutor | None = None,
    ) -> T:
        """``sync(fn, *args, **kwargs)`` (``write_sync`` or ``read_sync``) in a thread of
        ``lane`` (default: the ``database_threads`` every step's transactions share)."""
        return await self._in_lane(lane or self._threads, partial(sync, fn, *args, **kwargs))

    @staticmethod
    async def _in_lane(lane: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        """``call()`` in a thread of ``lane``, in a copy of this context. A caller cancelled
        before it starts nothing; once handed to the lane, the transaction is waited for to
        its end (its COMMIT never left with the outcome unknown to us), the cancellation
        arriving after it, as with ``anyio.to_thread``. Executors of our own, not
        ``anyio.to_thread``: ~33 against ~86 us of CPU a hop with 32 in flight here."""
        await checkpoint_if_cancelled()
        done = asyncio.wrap_future(lane.submit(copy_context().run, call))
        with anyio.CancelScope(shield=True):
            out = await done
        return out

    def _inline_tx(
        self, write: bool, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """``fn`` in a transaction on this thread's own connection, or _Busy at once (before
        ``fn`` ran, or after it was rolled back: it runs again in a thread, where it waits)."""
        inline: tuple[Connection, Any] | None = getattr(self._local, "inline", None)
        if inline is None:
            inline = self._local.inline = self._connect_inline()
        conn, driver = inline
        try:
            driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            return _transact(conn, fn, args, kwargs)
        except (OperationalError, sqlite3.OperationalError) as exc:
            # once BEGIN IMMEDIATE holds the write lock of a WAL file nothing waits, so this
            # is rare (a journal-mode file's COMMIT waiting for readers, say); _transact has
            # rolled back, so running the whole transaction again elsewhere is safe
            if _locked(exc):
                raise _Busy from None
            raise

    def _connect_inline(self) -> tuple[Connection, Any]:
        conn = self.engine.connect()
        driver = db.driver(conn)
        driver.execute("PRAGMA busy_timeout=0")  # never wait on the event loop's thread
        driver.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint
        with self._lock:
            self._inline_conns.append(conn)
        return conn, driver

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking writers (PASSIVE); when the
        WAL has grown past ``WAL_LIMIT_BYTES`` anyway (readers kept PASSIVE from finishing),
        truncate it at a moment without readers (TRUNCATE). With the connections'
        ``journal_size_limit`` this bounds the WAL of a worker that writes all night."""
        raw = self.engine.raw_connection()  # outside any transaction, as a checkpoint must be
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if self.wal_bytes() > WAL_LIMIT_BYTES:
                # TRUNCATE holds new writers while it waits for readers: give up at once if
                # there are any (it is tried again at the next checkpoint)
                cursor.execute("PRAGMA busy_timeout=20")
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cursor.execute(f"PRAGMA busy_timeout={db.BUSY_TIMEOUT_MS}")
        finally:
            raw.close()

    def wal_bytes(self) -> int:
        """The size of the SQLite WAL file (0 without one)."""
        try:
            return os.path.getsize(f"{self.engine.url.database}-wal")
        except OSError:
            return 0

    # -- notes (the NotesStore protocol used by the notes tools) ---------------------------

    async def append_note(self, agent: str, text: str) -> int:
        return await self.write(add_note, agent, text)

    async def search_notes(
        self, agent: str, query: str, limit: int = 10
    ) -> list[tuple[int, str, datetime]]:
        return await self.read(find_notes, agent, query, limit)

    async def read_notes(self, agent: str, limit: int = 20) -> list[tuple[int, str, datetime]]:
        return await self.read(find_notes, agent, None, limit)

    # -- artifacts (the ArtifactReader protocol used by read_artifact) ---------------------

    async def read_artifact(self, run_id: int, artifact_id: int) -> tuple[str, str] | None:
        return await self.read(get_artifact, artifact_id, run_id)
