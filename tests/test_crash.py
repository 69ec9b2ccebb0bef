"""A process killed between a persisted model step and its tool execution: the resumed task
neither re-sends the step (no second model call for it) nor loses it (the tool still runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from harness.store import Store, views
from harness.store.schema import calls
from tests.conftest import REPO
from tests.helpers import set_front_matter

BOOM = '''
import os
import signal
from pathlib import Path

from harness import tool


@tool
def boom(note: str) -> str:
    """Kill this process the first time it is called (a crash mid-task)."""
    marker = Path(os.environ["BOOM_MARKER"])
    if not marker.exists():
        marker.write_text(note)
        os.kill(os.getpid(), signal.SIGKILL)
    return "the tool ran: " + note
'''


def test_kill_between_persisted_step_and_tool_execution(
    workspace_dir: Path, tmp_path: Path
) -> None:
    (workspace_dir / "tools/boom.py").write_text(BOOM)
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[boom]")
    db = workspace_dir / "var/harness.db"
    store = Store.open(f"sqlite:///{db}")
    from harness.store import queue

    run_id, task_id = store.write_sync(queue.create_run, "research", "veblen", max_attempts=3)
    log = tmp_path / "requests.log"
    env = {
        "BOOM_MARKER": str(tmp_path / "boomed"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "tests.crash_agent", str(workspace_dir), str(log)]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == -9, first.stderr[-2000:]
    assert log.read_text().split() == ["2"]  # one model call, then the crash in the tool
    mid = store.read_sync(views.transcript, task_id)
    assert [m["role"] for m in mid] == ["system", "user", "assistant"]  # the step was persisted

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    # the resumed task did not re-send the persisted step: its next call already has the result
    assert log.read_text().split() == ["2", "4"]
    transcript = store.read_sync(views.transcript, task_id)
    assert [m["role"] for m in transcript] == ["system", "user", "assistant", "tool", "assistant"]
    assert transcript[3]["content"] == "the tool ran: once"
    run = store.read_sync(views.get_run, run_id)
    assert run is not None and run["status"] == "done"
    assert run["answer"] == "final answer after the tool"
    outcomes = store.read_sync(lambda c: c.execute(select(calls.c.outcome)).scalars().all())
    assert outcomes == ["ok", "ok"]  # two calls, each recorded once
    store.close()
