"""Engine set-up and migrations on both backends."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import text

from harness import db
from harness.migrations import HEAD_REVISION
from harness.store import Store


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
