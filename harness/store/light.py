"""The read-only commands' light path to a SQLite file, and what a database problem means.

``harness status`` and ``harness show`` read a few rows; importing SQLAlchemy alone takes
longer than the 300 ms they have (docs/benchmarks.md, B8). :func:`open_reader` opens a plain
``sqlite:///`` file with the standard library's ``sqlite3`` instead, for queries only
(``query_only``), when its schema is current: the read models of ``views`` (portable SQL,
``store.sql``) run on it unchanged. Anything else (PostgreSQL, a URI, a file that does not
exist yet or needs a migration) returns None and the caller opens the full ``Store``.

:func:`unusable` turns a driver's error into the one line a user reads (what is wrong, what
to do); ``engine`` uses it too, so both paths say the same.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from .. import scrub
from ..errors import ConfigError, Problem
from .migrations import HEAD_REVISION

__all__ = ["Reader", "open_reader", "refuse_empty", "unusable"]

P = ParamSpec("P")
T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000


class Reader:
    """Read transactions on one ``sqlite3`` connection (the ``Store.read_sync`` of the light
    path). A driver error inside is the one-line ConfigError of :func:`unusable`."""

    def __init__(self, conn: sqlite3.Connection, url: str) -> None:
        self._conn = conn
        self._url = url

    def read_sync(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(conn, *args)`` in one read transaction (one consistent snapshot)."""
        try:
            self._conn.execute("BEGIN")
            try:
                return fn(self._conn, *args, **kwargs)
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise unusable(self._url, exc) from None  # a sqlite URL holds no password

    def close(self) -> None:
        self._conn.close()


def plain_sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///path`` URL (None for anything else: PostgreSQL, a
    driver name, a ``file:`` URI or options, an in-memory database)."""
    prefix = "sqlite:///"
    rest = url[len(prefix) :] if url.startswith(prefix) else ""
    if not rest or "?" in rest or rest.startswith("file:") or ":memory:" in rest:
        return None
    return Path(rest)


def open_reader(url: str) -> Reader | None:
    """A :class:`Reader` on the SQLite file of ``url`` when it exists and its schema is
    current, else None (open the full Store instead: it creates, migrates, or explains)."""
    path = plain_sqlite_file(url)
    if path is None or not path.is_file():
        return None
    refuse_empty(path, url)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only=ON")
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        row = None  # no schema yet, or a damaged file: the Store says which
    if row is None or row[0] != HEAD_REVISION:
        conn.close()
        return None
    return Reader(conn, url)


def refuse_empty(path: Path, shown_url: str) -> None:
    """ConfigError when the SQLite file ``path`` is empty (0 bytes, no WAL): its history is
    gone or it was never written, and opening it would silently make a new database. (Seen
    twice, a moment apart: another process may just have created it.)"""
    if not _zero_bytes(path):
        return
    time.sleep(0.25)
    if _zero_bytes(path):
        raise ConfigError(
            Problem(
                f"database {shown_url}",
                "the file is empty (0 bytes): its history is gone, or it was never written. "
                "Restore it from a backup, or run `harness db upgrade` to start afresh in it",
            )
        )


def _zero_bytes(path: Path) -> bool:
    try:
        wal = Path(f"{path}-wal")
        return path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0)
    except OSError:
        return False


# words in a driver's message -> what is wrong, what to do
_ADVICE = (
    (
        ("file is not a database", "malformed", "disk image", "file is encrypted"),
        "the file is damaged or is not a harness database",
        "restore it from a backup, or move it away to start afresh",
    ),
    (
        ("readonly", "read-only", "permission denied"),
        "it is read-only",
        "make the file and its folder writable for this user",
    ),
    (
        ("unable to open database file",),
        "the file cannot be opened or created",
        "check that its folder exists and is writable, or fix database_url",
    ),
    (
        ("password authentication failed", "authentication failed", "role", "does not exist"),
        "the server refused the credentials or the database name",
        "check the user, password and database in database_url (or HARNESS_DATABASE_URL)",
    ),
    (
        ("connection refused", "could not translate", "timeout", "timed out", "no route"),
        "the server cannot be reached",
        "check that PostgreSQL is running there, or fix database_url (or HARNESS_DATABASE_URL)",
    ),
)


def unusable(shown_url: str, exc: BaseException, url: str | None = None) -> ConfigError:
    """One line for a database that cannot be used: ``shown_url`` (no password), what is
    wrong (the driver's first line, redacted) and what to do."""
    detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    if url:
        detail = detail.replace(url, shown_url)
    what, todo = "it cannot be used", "check database_url in config/harness.toml"
    lowered = detail.lower()
    for words, problem, advice in _ADVICE:
        if any(w in lowered for w in words):
            what, todo = problem, advice
            break
    detail = scrub.redact(detail)[:300]
    return ConfigError(Problem(f"database {shown_url}", f"{what} ({detail}): {todo}"))
