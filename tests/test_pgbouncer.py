"""harness behind PgBouncer in transaction mode (Debian's pgbouncer 1.18, which ``make setup``
installs): a private pgbouncer in front of a fresh database on the local PostgreSQL server.

A pooler in transaction mode gives each transaction whichever server connection is free, so
nothing may outlive a transaction on the server: session settings, ``LISTEN``, session
advisory locks, temporary tables, and psycopg's automatic prepared statements (a statement
run five times on a client connection is prepared on the server connection of that moment).
harness holds no session state (its one advisory lock, the migration's, is
``pg_advisory_xact_lock``); the prepared statements are turned off by the database URL's
``?prepare_threshold=none`` (see ``harness.store.engine``). The first test shows what goes
wrong without it; the second runs real work through the pooler: ``harness db upgrade``,
``harness submit``, a ``harness worker`` against the fake server until idle, ``harness
status`` and ``harness ledger``; nothing may be lost, with the setting or without it (then
the store stops preparing at the first statement the pooler loses, and says so).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from harness.errors import ConfigError
from harness.store import engine as db
from harness.store.schema import TaskStatus, calls, reservations, runs, tasks, usage_daily
from tests.conftest import PG_ADMIN_URL
from tests.processes import HARNESS, Procs, worker_env

PGBOUNCER = Path("/usr/sbin/pgbouncer")
RUNS = 60
CONCURRENCY = 4
SERVER_CONNECTIONS = 2  # fewer than the worker's connections: transactions change hands
NEVER_PREPARE = "?prepare_threshold=none"


@dataclass
class Bouncer:
    port: int
    database: str  # the fresh database behind it (reached directly with ``direct``)

    @property
    def url(self) -> str:
        """The pooler's URL for harness, without the setting it needs."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def direct(self) -> str:
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.database}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(folder: Path, port: int, database: str, upstream: Any) -> Path:
    users = folder / "users.txt"
    users.write_text('"postgres" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{database} = host={upstream.host} port={upstream.port or 5432} dbname={database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in (folder, users, ini):  # readable by the user pgbouncer drops to under root
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ini


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"pgbouncer is not listening on {port}:\n{log.read_text()}")


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[Bouncer]:
    """A fresh database and a private pgbouncer (transaction mode) in front of it."""
    assert PGBOUNCER.exists(), "make setup installs Debian's pgbouncer"
    name = f"harness_bouncer_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    folder = Path(tempfile.mkdtemp(prefix="harness-pgbouncer-"))  # not under tmp_path: 0700
    port = _free_port()
    ini = _write_config(folder, port, name, admin.url)
    log = tmp_path / "pgbouncer.log"
    args = [str(PGBOUNCER), str(ini)]
    if os.geteuid() == 0:
        args[1:1] = ["-u", "nobody"]  # pgbouncer refuses to run as root
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, log)
        yield Bouncer(port, name)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _same_statement_in_turn(url: str) -> None:
    """Two of harness's engines on ``url`` run one statement in turns, ten times each, one
    transaction at a time (the pooler hands both the server connection just freed)."""
    engines = [db.make_engine(url), db.make_engine(url)]
    try:
        with engines[0].connect() as one, engines[1].connect() as two:
            for i in range(10):
                for conn in (one, two):
                    db.driver(conn).execute("SELECT %s::int + 1", (i,)).fetchone()
                    db.driver(conn).commit()
    finally:
        for e in engines:
            e.dispose()


@pytest.mark.postgres
def test_prepared_statements_break_behind_the_pooler_unless_turned_off(bouncer: Bouncer) -> None:
    with pytest.raises(
        (psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName)
    ):
        _same_statement_in_turn(bouncer.url)
    _same_statement_in_turn(bouncer.url + NEVER_PREPARE)


def test_the_url_says_whether_statements_are_prepared() -> None:
    url = "postgresql+psycopg://u:secret@pooler:6432/harness"
    assert db.server_options(url) == (make_url(url), {})
    plain, args = db.server_options(url + "?prepare_threshold=none&sslmode=disable")
    assert (plain, args) == (make_url(url + "?sslmode=disable"), {"prepare_threshold": None})
    assert db.server_options(url + "?prepare_threshold=12")[1] == {"prepare_threshold": 12}
    with pytest.raises(ConfigError, match="prepare_threshold='sometimes'") as caught:
        db.make_engine(url + "?prepare_threshold=sometimes")
    assert "secret" not in str(caught.value)


def _harness(ws: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(HARNESS), "-w", str(ws), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"harness {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _line(event: dict[str, Any]) -> str:
    """A logged error as one line: its event and the exception's last line."""
    lines = str(event.get("exception") or event.get("error") or "").strip().splitlines()
    return f"{event.get('event')}: {lines[-1] if lines else ''}"


def _counts(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            statuses: dict[str, int] = dict(
                conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
            )
            ok = select(func.count()).where(calls.c.outcome == "ok")
            rolled = select(func.sum(usage_daily.c.calls)).where(usage_daily.c.agent == "veblen")
            return {
                "runs": conn.execute(select(func.count()).select_from(runs)).scalar_one(),
                "tasks": statuses,
                "calls": conn.execute(select(func.count()).select_from(calls)).scalar_one(),
                "ok_calls": conn.execute(ok.select_from(calls)).scalar_one(),
                "rolled_up": conn.execute(rolled).scalar_one(),
                "reservations": conn.execute(
                    select(func.count()).select_from(reservations)
                ).scalar_one(),
            }
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("setting", [NEVER_PREPARE, ""], ids=["never-prepare", "as-is"])
def test_a_worker_works_runs_through_pgbouncer_in_transaction_mode(
    bouncer: Bouncer, procs: Procs, workspace_dir: Path, setting: str
) -> None:
    """With ``?prepare_threshold=none``, and without it: then the first prepared statement
    the pooler loses makes every process stop preparing (one warning, saying what to add to
    the URL), and the transaction runs again; nothing fails."""
    fake = procs.fake("--ttft-s", "0.02")
    settings: dict[str, Any] = {
        "database_url": bouncer.url + setting,
        "worker__concurrency": CONCURRENCY,
        "worker__idle_poll_max_s": 0.2,
        "worker__db_failure_exit_s": 5,  # a pooler that breaks harness fails fast
        "providers__local__max_concurrency": CONCURRENCY,
    }
    env = worker_env(fake.url, **settings)
    assert "upgraded" in _harness(workspace_dir, env, "db", "upgrade")
    goals = workspace_dir / "goals.txt"
    goals.write_text("".join(f"goal {i}\n" for i in range(RUNS)))
    submit = ["submit", "--agent", "veblen", "--from", str(goals), "--json"]
    run_ids = json.loads(_harness(workspace_dir, env, *submit))
    worker = procs.worker(workspace_dir, fake, "--until-idle", **settings)
    assert worker.wait(timeout=120) == 0, procs.logs[worker.pid].read_text()[-3000:]
    events = procs.events(worker)
    errors = [_line(e) for e in events if e.get("level") == "error"]
    assert not errors, "\n".join(errors[:5])
    stopped = [e for e in events if e.get("event") == "database_stopped_preparing"]
    if setting:
        assert not stopped
    else:  # the pooler did lose one (two server connections for the worker's many)
        assert len(stopped) == 1, [e.get("event") for e in events if e.get("level") != "info"]
        assert "prepare_threshold=none" in stopped[0]["advice"]

    status = json.loads(_harness(workspace_dir, env, "status", "--json", "--limit", str(RUNS)))
    ledger = json.loads(_harness(workspace_dir, env, "ledger", "--json"))
    counts = _counts(bouncer.direct)  # read past the pooler, straight from the server
    assert len(run_ids) == RUNS == counts["runs"]
    assert sorted(r["id"] for r in status) == sorted(run_ids)
    assert {r["status"] for r in status} == {"done"}
    assert sum(r["usage"]["calls"] for r in status) == RUNS
    assert counts["tasks"] == {TaskStatus.DONE.value: RUNS}
    assert counts["calls"] == counts["ok_calls"] == RUNS == fake.stats()["completions"]
    assert counts["rolled_up"] == RUNS == sum(row["calls"] for row in ledger)
    assert sum(row["unsettled_calls"] for row in ledger) == 0
    assert counts["reservations"] == 0
