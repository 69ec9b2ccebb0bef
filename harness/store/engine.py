"""Engine setup per dialect and schema migrations (Alembic, applied automatically).

SQLite is tuned once per connection: WAL, ``synchronous=NORMAL``, ``busy_timeout``, foreign keys,
and write transactions that start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a
lock upgrade. Read-only work uses ``read_only=True`` connections (a plain deferred ``BEGIN``).
PostgreSQL uses psycopg 3 (``postgresql+psycopg://``), its connections in autocommit mode and
transactions begun by harness, as on SQLite: a write transaction's ``BEGIN`` goes to the server
with its first statement, read-only work runs statement by statement (:func:`_tune_postgres`).
psycopg prepares a statement on the
server once a connection has run it ``prepare_threshold`` times (5): a third less work per
queue transition here (docs/operations.md, "Capacity"), but a named prepared statement lives
on one server connection, and a pooler in transaction mode (PgBouncer before 1.21) hands each
transaction whichever server connection is free. The URL's ``prepare_threshold`` query
parameter (psycopg's own name; ``none``: never prepare) is taken off the URL and given to
psycopg, so ``...:6432/harness?prepare_threshold=none`` works behind such a pooler. Without
it, the first prepared statement such a pooler loses makes the engine prepare none from then
on (:func:`stop_preparing`; the ``Store`` runs the transaction again and logs it once).
"""

from __future__ import annotations

import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from functools import cache
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Float,
    Insert,
    Table,
    cast,
    create_engine,
    event,
    extract,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError

from .. import clock
from ..errors import ConfigError, Problem
from . import light
from .migrations import HEAD_REVISION

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.dialects import postgresql, sqlite

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
WAL_LIMIT_BYTES = 64 * 2**20  # a reset WAL is cut back to this (journal_size_limit)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with harness's per-dialect tuning applied."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            _tune_sqlite(engine)
        else:
            parsed, connect_args = server_options(url)
            connect_args["autocommit"] = True  # harness begins transactions: _tune_postgres
            engine = create_engine(parsed, pool_size=10, max_overflow=20, connect_args=connect_args)
            _tune_postgres(engine)
            _ping_when_idle(engine)
            _prepare_until_refused(engine)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(Problem("database_url", f"cannot use {redact(url)!r}: {exc}")) from exc
    return engine


PREPARE_THRESHOLD = "prepare_threshold"


def server_options(url: str) -> tuple[URL, dict[str, Any]]:
    """A server URL without harness's own query parameters, and the driver's arguments they
    ask for: ``prepare_threshold=none`` (never prepare statements on the server: behind a
    pooler in transaction mode) or a count (psycopg's default is 5). A ConfigError names a
    value that is neither."""
    parsed = make_url(url)
    if PREPARE_THRESHOLD not in parsed.query:
        return parsed, {}
    raw = parsed.query[PREPARE_THRESHOLD]
    value = (raw[-1] if isinstance(raw, tuple) else raw).strip().lower()
    if value in ("none", "off", "never"):
        threshold: int | None = None
    elif value.isdigit():
        threshold = int(value)
    else:
        why = f"prepare_threshold={value!r} in {redact(url)!r}: give a count, or none"
        raise ConfigError(Problem("database_url", why + " (never prepare: behind a pooler)"))
    return parsed.difference_update_query([PREPARE_THRESHOLD]), {PREPARE_THRESHOLD: threshold}


def open_engine(url: str, *, migrate: bool = True, allow_empty: bool = False) -> Engine:
    """An engine for ``url`` that has answered (the schema brought current with ``migrate``).

    Every way this fails is a ConfigError of one line naming the URL (password hidden) and
    what to do: a file that cannot be opened or created, a read-only file or folder, a
    damaged or truncated file, a server that cannot be reached or refuses us. A SQLite file
    of zero bytes (its history gone, or never written) is refused unless ``allow_empty`` (as
    ``harness db upgrade`` asks): it would silently become a new, empty database.
    """
    if not allow_empty:
        _refuse_empty(url)
    engine = make_engine(url)
    try:
        if migrate:
            checked_upgrade(engine, url)
        else:
            _checked(url, current_revision, engine)
    except ConfigError:
        engine.dispose()
        raise
    return engine


def checked_upgrade(engine: Engine, url: str) -> bool:
    """:func:`upgrade`, a database that cannot be used raising the ConfigError of
    :func:`unusable`."""
    return bool(_checked(url, upgrade, engine))


def _checked(url: str, fn: Callable[[Engine], Any], engine: Engine) -> Any:
    try:
        return fn(engine)
    except (DBAPIError, sqlite3.Error, OSError) as exc:
        raise unusable(url, exc) from None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL and for in-memory databases)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _refuse_empty(url: str) -> None:
    path = sqlite_path(url)
    if path is not None:
        light.refuse_empty(path, redact(url))


def unusable(url: str, exc: BaseException) -> ConfigError:
    """One line for a database that cannot be used (see :func:`harness.store.light.unusable`),
    the URL's password hidden."""
    return light.unusable(redact(url), exc, url)


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


# engines whose server refused one of psycopg's prepared statements (see stop_preparing)
_NEVER_PREPARE: weakref.WeakSet[Engine] = weakref.WeakSet()


def lost_prepared_statement(exc: BaseException) -> bool:
    """psycopg's own prepared statement (``_pg3_N``) missing or already there on the server:
    a pooler in transaction mode handed the connection another server connection than the
    one it prepared on. Nothing was committed: the transaction can run again, unprepared."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None)  # 26000 invalid name, 42P05 duplicate
    return sqlstate in ("26000", "42P05") and "_pg3_" in str(orig)


def stop_preparing(engine: Engine) -> bool:
    """Prepare no statement on the server any more on ``engine``'s connections (from their
    next checkout: as ``?prepare_threshold=none`` would have from the start). True the
    first time."""
    if engine in _NEVER_PREPARE:
        return False
    _NEVER_PREPARE.add(engine)
    return True


def _prepare_until_refused(engine: Engine) -> None:
    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if engine in _NEVER_PREPARE:
            dbapi_conn.prepare_threshold = None


PING_AFTER_IDLE_S = 2.0


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use when it has been idle a while (a server restart
    or an idle timeout may have closed it): a dead one is replaced before any work is lost.
    A busy worker's connections skip the round trip that ``pool_pre_ping`` would add to
    every transaction."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:  # the pool retries with a new connection
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if driver(conn).in_transaction:
            return  # begun by the store's inline path (it chose how; see harness.store)
        read_only = conn.get_execution_options().get("read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _tune_postgres(engine: Engine) -> None:
    """Transactions are begun by harness, as on SQLite (psycopg's connections are in
    autocommit mode): psycopg's own ``BEGIN`` waits for its answer before the first
    statement is sent, in pipeline mode too, a round trip of its own. A write transaction of
    the ``Store`` (:func:`begin_with_first_statement`) sends its ``BEGIN`` with its first
    statements instead; one that SQLAlchemy begins (``engine.begin()``, a Core statement
    first) sends it at once. Read-only work (``read_only=True``) runs statement by
    statement: no ``BEGIN``, no ``COMMIT``, and no less than before (under READ COMMITTED
    every statement sees its own snapshot either way)."""

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("read_only", False):
            return
        raw = driver(conn)
        _UNBEGUN.discard(raw)
        if raw.info.transaction_status == _PG_IDLE:
            raw.execute(_BEGIN)


_BEGIN = b"BEGIN"
_PG_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open
# PostgreSQL connections of a write transaction whose BEGIN is still to be sent
_UNBEGUN: weakref.WeakSet[Any] = weakref.WeakSet()


def begin_with_first_statement(conn: Connection) -> None:
    """Open a write transaction on ``conn`` whose ``BEGIN`` goes to the server with its
    first statement (:func:`run`, :func:`batch`; PostgreSQL). Undo with
    :func:`forget_begin` once the transaction has ended, whether or not it was sent."""
    _UNBEGUN.add(driver(conn))


def forget_begin(conn: Connection) -> None:
    _UNBEGUN.discard(driver(conn))


def _send_begin(raw: Any) -> None:
    """The pending ``BEGIN``, queued in the pipeline that is open on ``raw``."""
    _UNBEGUN.discard(raw)
    cur = _BEGIN_CURSORS.get(raw)
    if cur is None:
        cur = _BEGIN_CURSORS[raw] = raw.cursor()
    cur.execute(_BEGIN, prepare=False)  # nothing to gain, and a pooler may lose it


DB_CLOCK: ColumnElement[float] = cast(extract("epoch", func.clock_timestamp()), Float)
"""PostgreSQL's clock as seconds since the epoch, read where a statement evaluates it."""
_DB_NOW = select(DB_CLOCK)


def lease_now(conn: Connection) -> float:
    """The clock leases and worker heartbeats are measured with: the database's on
    PostgreSQL (one clock for every machine sharing the queue, so they need no clock
    agreement), this process's on SQLite (one machine). A statement that only writes or
    compares it uses :func:`lease_clock` instead, and saves the round trip."""
    if is_postgres(conn):
        return float(conn.execute(_DB_NOW).scalar_one())
    return clock.now()


def lease_clock(conn: Connection) -> ColumnElement[float]:
    """:func:`lease_now` as SQL, for the one statement that uses it: the database's clock,
    read by that statement, on PostgreSQL; this process's, bound, on SQLite."""
    return DB_CLOCK if is_postgres(conn) else literal(clock.now(), Float)


def driver(conn: Connection) -> Any:
    """The DB-API connection under ``conn`` (sqlite3 or psycopg: synchronous drivers, whose
    ``dbapi_connection`` is the driver's own connection, one attribute away)."""
    return conn.connection.dbapi_connection


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


def insert_ignore(conn: Connection, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the connection's dialect (built once per
    dialect and table; pass the rows as parameters)."""
    return _insert_ignore(conn.dialect.name, table)


@cache
def _insert_ignore(dialect: str, table: Table) -> Insert:
    return _dialect_insert(dialect, table).on_conflict_do_nothing()


def insert_or_add(conn: Connection | Batch, table: Table, counters: tuple[str, ...]) -> Insert:
    """``INSERT ... ON CONFLICT (primary key) DO UPDATE SET c = c + excluded.c`` for each of
    ``counters``: the row made with the values given, or those values added to the row that
    is there, in one statement that locks the row as an UPDATE would (built once per dialect;
    pass the key columns and the counters as parameters)."""
    return _insert_or_add(conn.dialect.name, table, counters)


@cache
def _insert_or_add(dialect: str, table: Table, counters: tuple[str, ...]) -> Insert:
    stmt = _dialect_insert(dialect, table)
    added: dict[str, Any] = {name: table.c[name] + stmt.excluded[name] for name in counters}
    return stmt.on_conflict_do_update(index_elements=list(table.primary_key), set_=added)


def _dialect_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's own ``insert`` (the one with ``ON CONFLICT``)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


# -- the hot path: prebuilt statements straight to the driver -------------------------------

# (dialect, id(statement), INSERT columns) -> (statement, SQL, positional order, fixed values)
_Prepared = tuple[Executable, str, Callable[[Mapping[str, Any]], Any] | None, dict[str, Any]]
_PREPARED: dict[tuple[str, int, tuple[str, ...]], _Prepared] = {}


def run(
    conn: Connection,
    stmt: Executable,
    params: Mapping[str, Any] | list[dict[str, Any]] = MappingProxyType({}),
    *,
    own_cursor: bool = False,
) -> Any:
    """Execute a prebuilt Core statement on the driver's cursor; returns the DB-API cursor.

    The statement is compiled once per dialect (and, for an INSERT, per set of columns
    given), so a call costs little more than the driver's own ``execute``: no SQLAlchemy
    result objects or type processing. For the queue's and the ledger's hot paths, whose
    parameters are plain values (str, int, float, bool, None) and whose INSERTs name their
    columns (omitted columns get their scalar Python default). Rows come back as tuples in
    the statement's column order. A list of parameter dicts (all with the same keys) runs
    ``executemany``.

    On PostgreSQL the statement runs on a cursor kept for the connection (a new psycopg
    cursor sets up its adapters afresh: ~10 us of CPU a statement), so the next ``run`` on
    the same connection replaces what it returned: read a result before running another
    statement. (sqlite3 cursors are cheap, and one left holding an unfinished SELECT would
    keep a read snapshot open: SQLite gets a new cursor each time.) ``own_cursor``: a new
    cursor all the same (see :func:`batch`).
    """
    rows: list[dict[str, Any]] | None = params if isinstance(params, list) else None
    first: Mapping[str, Any] = params if rows is None else (rows[0] if rows else {})  # type: ignore[assignment]
    key = (conn.dialect.name, id(stmt), tuple(first) if isinstance(stmt, Insert) else ())
    prepared = _PREPARED.get(key)
    if prepared is None or prepared[0] is not stmt:
        prepared = _PREPARED[key] = (stmt, *_prepare(conn, stmt, key[2]))
    _, sql, order, fixed = prepared
    raw = driver(conn)
    if key[0] == "postgresql":
        cur = raw.cursor() if own_cursor else _CURSORS.get(raw)
        if cur is None:
            cur = _CURSORS[raw] = raw.cursor()
        if raw in _UNBEGUN:  # a transaction's first statement, with its BEGIN: one round trip
            with raw.pipeline():
                _send_begin(raw)
                _execute(cur, sql, order, fixed, first, rows)
            return cur
    else:  # sqlite3's Connection.execute makes a new cursor
        cur = raw if rows is None else raw.cursor()
    return _execute(cur, sql, order, fixed, first, rows)


def _execute(
    cur: Any,
    sql: str,
    order: Callable[[Mapping[str, Any]], Any] | None,
    fixed: dict[str, Any],
    first: Mapping[str, Any],
    rows: list[dict[str, Any]] | None,
) -> Any:
    if rows is None:
        if fixed:
            first = {**fixed, **first}
        return cur.execute(sql, first if order is None else order(first))
    if fixed:
        rows = [{**fixed, **p} for p in rows]
    cur.executemany(sql, rows if order is None else [order(p) for p in rows])
    return cur


# each PostgreSQL connection's cursor for ``run`` (see there), and the one its BEGIN goes
# on; gone with their connection
_CURSORS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_BEGIN_CURSORS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


class Batch:
    """Statements of :func:`batch`: ``run`` as :func:`run`, each on a cursor of its own."""

    def __init__(self, conn: Connection, postgres: bool) -> None:
        self._conn = conn
        self.dialect = conn.dialect
        self.postgres = postgres  # its statements pipelined (only PostgreSQL's are)

    def run(self, stmt: Executable, params: Mapping[str, Any] = MappingProxyType({})) -> Any:
        cur = run(self._conn, stmt, params, own_cursor=True)
        if self.postgres or cur.description is None:
            return cur
        # sqlite3 steps a statement's rows as they are read, and one left unread keeps it
        # running (a COMMIT after it fails): read them now
        return _Read(cur.fetchall(), cur.rowcount)


class _Read:
    """A statement's rows, read (as a cursor gives them: ``fetchone``, ``fetchall``)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = iter(rows)
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return next(self._rows, None)

    def fetchall(self) -> list[Any]:
        return list(self._rows)


@contextmanager
def batch(conn: Connection) -> Iterator[Batch]:
    """Statements whose results are read only once the block has ended (its cursors'
    ``rowcount`` and rows are there then, not before): on PostgreSQL they go to the server
    together and come back in one round trip (psycopg's pipeline mode), instead of one each;
    elsewhere they run one by one as they come. A ``run`` in the block (a cursor shared with
    other statements) is sent with them too; read no result in the block. (A batch within a
    batch ends the outer one's round trip first, and makes one of its own.) An error in one
    surfaces by the block's end at the latest (the transaction is then to be rolled back, as
    after any error)."""
    if not is_postgres(conn):
        yield Batch(conn, postgres=False)
        return
    raw = driver(conn)
    with raw.pipeline():
        if raw in _UNBEGUN:  # the transaction's BEGIN goes with them
            _send_begin(raw)
        yield Batch(conn, postgres=True)


def _prepare(
    conn: Connection, stmt: Executable, keys: tuple[str, ...]
) -> tuple[str, Callable[[Mapping[str, Any]], Any] | None, dict[str, Any]]:
    defaults: dict[str, Any] = {}
    kw: dict[str, Any] = {}
    if isinstance(stmt, Insert):
        for col in stmt.table.columns:
            default: Any = col.default
            if col.key not in keys and default is not None and default.is_scalar:
                defaults[col.key] = default.arg
        kw["column_keys"] = [*keys, *defaults]
    compiled = stmt.compile(dialect=conn.dialect, **kw)  # type: ignore[attr-defined]
    sql = compiled.string
    if "POSTCOMPILE" in sql:
        raise ValueError(f"db.run cannot run a statement with expanding parameters: {sql}")
    for bind, name in compiled.bind_names.items():  # values written into the statement
        if not bind.required and name not in keys:
            value = bind.effective_value
            defaults[name] = value.value if isinstance(value, Enum) else value
    order = _getter(tuple(compiled.positiontup)) if compiled.positional else None
    return sql, order, defaults


def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The positional parameters, in ``keys`` order, of a parameter dict."""
    if len(keys) > 1:
        return itemgetter(*keys)  # a tuple for two keys or more
    return lambda params: tuple(params[k] for k in keys)


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """Read-only work: a transaction on SQLite (no write lock), statement by statement on
    PostgreSQL (see :func:`_tune_postgres`)."""
    with engine.connect().execution_options(read_only=True) as conn, conn.begin():
        yield conn


def _alembic_config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def script_head() -> str | None:
    """The newest revision in ``harness/migrations/versions`` (Alembic's view)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _stored_revision(conn: Connection) -> str | None:
    try:
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no alembic_version table yet
        return None


def current_revision(engine: Engine) -> str | None:
    with engine.connect().execution_options(read_only=True) as conn:
        return _stored_revision(conn)


def upgrade(engine: Engine) -> bool:
    """Bring the schema to the newest revision. Returns True when anything was applied.

    A current database costs one ``SELECT`` (Alembic is imported only to migrate). Safe to
    call from several processes at once: on PostgreSQL an advisory lock serialises
    migrations; on SQLite the migration runs inside one ``BEGIN IMMEDIATE`` transaction.
    """
    if current_revision(engine) == HEAD_REVISION:
        return False
    from alembic import command

    with engine.begin() as conn:
        if is_postgres(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(74657)"))
        if _stored_revision(conn) == HEAD_REVISION:
            return False
        command.upgrade(_alembic_config(conn), "head")
    return True
