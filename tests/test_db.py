"""Engine set-up and migrations on both backends."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import text

from harness.store import Store
from harness.store import engine as db
from harness.store.migrations import HEAD_REVISION


def test_head_revision_constant_matches_the_migrations() -> None:
    assert db.script_head() == HEAD_REVISION


def test_upgrade_applies_once_and_is_cheap_when_current(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)  # the fixture database may be fresh or current
    assert db.current_revision(engine) == HEAD_REVISION
    assert db.upgrade(engine) is False
    engine.dispose()


def test_sqlite_connections_are_tuned(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.BUSY_TIMEOUT_MS
    store.close()


def test_starting_on_a_current_database_does_not_import_alembic(sqlite_url: str) -> None:
    Store.open(sqlite_url).close()
    code = (
        "import sys; from harness.store import Store; "
        f"Store.open({sqlite_url!r}).close(); print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_redact_hides_the_password() -> None:
    assert "secret" not in db.redact("postgresql+psycopg://u:secret@h/db")


def test_sqlite_writes_run_inline_and_wait_in_a_thread_when_another_writer_holds_the_lock(
    sqlite_url: str, monkeypatch: Any
) -> None:
    """An idle SQLite file is written on the event loop's thread (no thread hop); while
    another connection holds the write lock the write waits in a worker thread, and the
    event loop goes on meanwhile."""
    import sqlite3
    import threading

    import anyio

    from harness.store import access as store_mod

    store = Store.open(sqlite_url)
    threads: list[str] = []

    def where(conn: Any, value: int) -> int:
        threads.append(threading.current_thread().name)
        conn.execute(text("CREATE TABLE IF NOT EXISTS probe (v INTEGER)"))
        conn.execute(text("INSERT INTO probe VALUES (:v)"), {"v": value})
        return value

    checkpoints: list[int] = []
    real_checkpoint = store._checkpoint
    monkeypatch.setattr(store_mod, "CHECKPOINT_EVERY", 2)

    def counted() -> None:
        checkpoints.append(1)
        real_checkpoint()

    monkeypatch.setattr(store, "_checkpoint", counted)

    async def main() -> None:
        assert await store.write(where, 1) == 1
        assert threads == [threading.current_thread().name]  # inline
        other = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer (process) holds the lock
        ticks = 0
        async with anyio.create_task_group() as tg:

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await anyio.sleep(0.01)

            tg.start_soon(tick)
            with anyio.fail_after(5):
                tg.start_soon(store.write, where, 2)
                await anyio.sleep(0.2)
                assert ticks >= 5  # the loop was not blocked by the waiting write
                # a read needs no lock in WAL mode: it runs inline meanwhile
                assert await store.read(lambda c: c.execute(text("SELECT 1")).scalar()) == 1
                other.execute("COMMIT")
                while len(threads) < 2:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        other.close()
        assert threads[1] != threads[0]  # it waited in a worker thread
        assert await store.write(where, 3) == 3
        assert checkpoints == [1]  # every CHECKPOINT_EVERY inline commits, in a thread
        rows = await store.read(lambda c: c.execute(text("SELECT v FROM probe")).scalars().all())
        assert sorted(rows) == [1, 2, 3]

    anyio.run(main)
    store.close()


def test_run_executes_prebuilt_statements_on_the_driver(db_url: str) -> None:
    """``db.run``: INSERTs fill omitted columns with their Python defaults, values written
    into a statement travel with it, RETURNING and executemany work, on both backends."""
    from sqlalchemy import bindparam, insert, select, update

    from harness.store.schema import TaskStatus, runs, tasks

    store = Store.open(db_url)
    new_run = insert(runs).returning(runs.c.id)
    bump = (
        update(runs)
        .where(runs.c.id == bindparam("p_id"), runs.c.agent == "veblen")  # a fixed value
        .values(calls=runs.c.calls + bindparam("n"))
        .returning(runs.c.calls)
    )
    queued = select(tasks.c.id).where(tasks.c.status == TaskStatus.QUEUED)

    def work(conn: Any) -> tuple[int, int, int, list[int]]:
        rid = db.run(conn, new_run, {"goal": "g", "agent": "veblen", "created_at": 1.0})
        run_id = rid.fetchone()[0]
        calls = db.run(conn, bump, {"p_id": run_id, "n": 2}).fetchone()[0]
        rows = [
            {"run_id": run_id, "agent": "veblen", "input": f"t{i}", "status": s, "created_at": 1.0}
            for i, s in enumerate(["queued", "done", "queued"])
        ]
        for row in rows:
            row["updated_at"] = 1.0
        db.run(conn, insert(tasks), rows)  # executemany; depth, attempts... by default
        depth = conn.execute(select(tasks.c.depth, tasks.c.max_attempts)).first()
        ids = [r[0] for r in db.run(conn, queued)]
        return calls, depth[0], depth[1], ids

    calls, depth, max_attempts, ids = store.write_sync(work)
    assert (calls, depth, max_attempts, len(ids)) == (2, 0, 3, 2)

    def expanding(conn: Any) -> None:
        db.run(conn, select(tasks.c.id).where(tasks.c.id.in_(bindparam("ids", expanding=True))))

    with pytest.raises(ValueError, match="expanding"):
        store.write_sync(expanding)
    store.close()


@pytest.mark.postgres
def test_a_pooled_connection_closed_by_the_server_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a PostgreSQL restart (or an idle timeout) the pool's idle connections are dead;
    one idle for PING_AFTER_IDLE_S is tested at checkout and replaced, so no work fails."""
    store = Store.open(pg_url)
    pid = store.write_sync(lambda c: c.execute(text("SELECT pg_backend_pid()")).scalar())
    admin = db.make_engine(pg_url)
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    new_pid = store.write_sync(lambda c: c.execute(text("SELECT pg_backend_pid()")).scalar())
    assert new_pid != pid
    store.close()


def test_an_inline_transaction_commits_or_rolls_back_whole(sqlite_url: str) -> None:
    """Inline SQLite transactions commit on the driver (hot-path statements) or through
    SQLAlchemy (Core statements joined them); an exception rolls everything back."""
    import anyio
    from sqlalchemy import insert, select

    from harness.store.schema import notes

    store = Store.open(sqlite_url)
    add = insert(notes)

    def raw_then(conn: Any, fail: bool) -> None:
        db.run(conn, add, {"agent": "veblen", "text": "driver", "created_at": 1.0})
        if fail:
            raise RuntimeError("boom")

    def core_then(conn: Any, fail: bool) -> None:
        db.run(conn, add, {"agent": "veblen", "text": "both-driver", "created_at": 1.0})
        conn.execute(insert(notes).values(agent="veblen", text="both-core", created_at=1.0))
        if fail:
            raise RuntimeError("boom")

    async def main() -> list[str]:
        for fn in (raw_then, core_then):
            with pytest.raises(RuntimeError):
                await store.write(fn, True)
            await store.write(fn, False)
        return list(await store.read(lambda c: c.execute(select(notes.c.text)).scalars().all()))

    assert sorted(anyio.run(main)) == ["both-core", "both-driver", "driver"]
    store.close()


def test_a_lock_met_inside_an_inline_transaction_runs_it_again_in_a_thread(
    sqlite_url: str,
) -> None:
    """The inline connection never waits (busy_timeout=0), so a lock met after BEGIN (a
    journal-mode COMMIT waiting for readers, say) aborts the attempt: it is rolled back
    whole and the transaction runs again in a worker thread, where it may wait."""
    import sqlite3
    import threading

    import anyio
    from sqlalchemy import insert, select

    from harness.store.schema import notes

    store = Store.open(sqlite_url)
    threads: list[str] = []

    def add_then_meet_a_lock(conn: Any) -> int:
        threads.append(threading.current_thread().name)
        db.run(conn, insert(notes), {"agent": "veblen", "text": "once", "created_at": 1.0})
        if len(threads) == 1:
            raise sqlite3.OperationalError("database is locked")
        return len(threads)

    async def main() -> list[str]:
        assert await store.write(add_then_meet_a_lock) == 2
        return list(await store.read(lambda c: c.execute(select(notes.c.text)).scalars().all()))

    assert anyio.run(main) == ["once"]  # the first attempt left nothing behind
    assert threads[0] == threading.main_thread().name and threads[1] != threads[0]
    store.close()


def test_a_commit_that_meets_a_reader_is_rolled_back_and_waits_in_a_thread(
    sqlite_url: str,
) -> None:
    """A real lock after BEGIN: on a rollback-journal file (no WAL, e.g. a filesystem without
    shared memory) COMMIT needs every reader gone. The inline attempt must then let go of its
    lock (roll back) and the write wait in a thread until the reader finishes."""
    import sqlite3
    import threading

    import anyio
    from sqlalchemy import create_engine, event, insert, select

    from harness.store.schema import notes

    engine = create_engine(sqlite_url, connect_args={"timeout": 5})

    @event.listens_for(engine, "connect")
    def _journal_mode(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=DELETE")

    db.upgrade(engine)
    store = Store(engine)
    add = insert(notes)
    threads: list[str] = []

    def note(conn: Any, text: str) -> None:
        threads.append(threading.current_thread().name)
        db.run(conn, add, {"agent": "veblen", "text": text, "created_at": 1.0})

    async def main() -> list[str]:
        await store.write(note, "before")  # inline, no reader
        reader = sqlite3.connect(str(engine.url.database), isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM notes").fetchone()  # holds a shared lock
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.write, note, "during")
            await anyio.sleep(0.3)  # the write waits (in a thread), the loop runs
            reader.execute("COMMIT")
        reader.close()
        await store.write(note, "after")  # inline again: nothing was left holding the lock
        return list(await store.read(lambda c: c.execute(select(notes.c.text)).scalars().all()))

    assert sorted(anyio.run(main)) == ["after", "before", "during"]
    main_thread = threading.main_thread().name
    assert threads[0] == threads[1] == threads[-1] == main_thread
    assert threads[2] != main_thread  # the second attempt of "during"
    store.close()


def test_the_migrations_build_exactly_the_schema(sqlite_url: str) -> None:
    """A revision that forgets a column, an index or a constraint of schema.py fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from harness.store.schema import metadata

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []
