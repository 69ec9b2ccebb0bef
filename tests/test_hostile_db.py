"""Databases that cannot be used (issue 13, "from the database").

Each is one line naming the URL (password hidden) and what to do, exit 2, never a traceback;
an empty file is refused unless ``harness db upgrade`` is asked for; a worker whose database
is damaged under it stops after ``worker.db_failure_exit_s``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import DatabaseFailing
from harness.worker import Worker
from tests.helpers import runtime, submit, work

runner = CliRunner()


def _upgraded(ws: Path) -> Path:
    assert runner.invoke(app, ["-w", str(ws), "db", "upgrade"]).exit_code == 0
    return ws / "var/harness.db"


def _truncate(ws: Path) -> None:
    db = _upgraded(ws)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])


def _garbage(ws: Path) -> None:
    (ws / "var/harness.db").write_bytes(b"not a database at all. " * 200)


def _empty(ws: Path) -> None:
    (ws / "var/harness.db").write_bytes(b"")


# how to break it, the URL to use (None: the workspace's), words the one line must hold
CASES: dict[str, tuple[Callable[[Path], object] | None, str | None, str]] = {
    "an unopenable path": (None, "sqlite:////nonexistent-harness-dir/a/b.db", "cannot be opened"),
    "an unreachable PostgreSQL": (
        None,
        "postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:1/harness",
        "cannot be reached",
    ),
    "a corrupt file": (_garbage, None, "damaged"),
    "a truncated file": (_truncate, None, "damaged"),
    "a read-only database": (
        _upgraded,
        "sqlite:///file:{ws}/var/harness.db?mode=ro&uri=true",
        "read-only",
    ),
    "an empty file": (_empty, None, "harness db upgrade"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(
    workspace_dir: Path, case: str
) -> None:
    damage, url, words = CASES[case]
    if damage is not None:
        damage(workspace_dir)
    env = {"HARNESS_DATABASE_URL": url.format(ws=workspace_dir)} if url else {}
    commands = [["status"], ["submit", "a goal"], ["ledger"]]
    if case == "a read-only database":  # reading it is fine; writing is the problem
        assert runner.invoke(app, ["-w", str(workspace_dir), "status"], env=env).exit_code == 0
        commands = [["submit", "a goal"]]
    for command in commands:
        res = runner.invoke(app, ["-w", str(workspace_dir), *command], env=env)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, (command, res.stderr)
        assert lines[0].startswith("error: database ") and words in lines[0], lines[0]
        assert "hunter2" not in res.stderr and "Traceback" not in res.stderr


def test_an_empty_file_is_kept_until_db_upgrade_is_asked_for(workspace_dir: Path) -> None:
    _empty(workspace_dir)
    res = runner.invoke(app, ["-w", str(workspace_dir), "status"])
    assert res.exit_code == 2 and "empty (0 bytes)" in res.stderr
    assert (workspace_dir / "var/harness.db").stat().st_size == 0  # left as it was
    res = runner.invoke(app, ["-w", str(workspace_dir), "db", "upgrade"])
    assert res.exit_code == 0 and "(upgraded)" in res.stdout
    assert runner.invoke(app, ["-w", str(workspace_dir), "status"]).exit_code == 0


def test_the_console_script_prints_no_traceback(workspace_dir: Path) -> None:
    _garbage(workspace_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "-w", str(workspace_dir), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "damaged" in proc.stderr


@pytest.mark.anyio
async def test_a_worker_whose_database_is_damaged_under_it_stops(workspace_dir: Path) -> None:
    cfg = workspace_dir / "config/harness.toml"
    cfg.write_text(cfg.read_text().replace("[worker]\n", "[worker]\ndb_failure_exit_s = 1\n"))
    rt, _ = runtime(workspace_dir, lambda request: "an answer")
    await submit(rt, "warm up", "veblen")
    await work(rt, concurrency=1)  # the file is in use, and fine
    db = workspace_dir / "var/harness.db"

    async def damage() -> None:
        await anyio.sleep(0.5)
        with sqlite3.connect(db) as conn:  # everything into the file, then the file damaged
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.stat().st_size
        with db.open("r+b") as f:
            f.write(b"\x00garbage" * (size // 8))

    started = time.monotonic()
    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(damage)
            await Worker(rt, 1, handle_signals=False).run()
    assert time.monotonic() - started < 30
    [failing] = info.value.exceptions
    assert isinstance(failing, DatabaseFailing)
    message = str(failing)
    assert "kept failing for 1s" in message and "harness.db" in message
    assert "repair or restore" in message
    rt.store.close()
