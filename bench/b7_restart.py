"""B7: a worker restarted after SIGKILL with many queued tasks: time until the first task runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import (
    FakeServerProcess,
    Section,
    Sizes,
    Spread,
    log,
    make_workspace,
    subprocess_env,
    verdict,
)

AGENT = "veblen"


def harness_bin() -> str:
    return str(Path(sys.executable).parent / "harness")


def enqueue(db_url: str, n: int, agent: str = AGENT) -> None:
    from harness.store import Store, queue

    st = Store.open(db_url)
    try:
        st.write_sync(
            lambda conn: [
                queue.create_run(conn, f"goal {i}", agent, max_attempts=3) for i in range(n)
            ]
        )
    finally:
        st.close()


class WorkerProcess:
    """``harness worker`` in a subprocess; remembers when each log event was first seen."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [harness_bin(), "--log-json", "worker", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: dict[str, float] = {}
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            now = time.perf_counter()
            if len(self.lines) < 50:
                self.lines.append(line.rstrip())
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event and event not in self.events:
                self.events[event] = now - self.t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def failure(self) -> str:
        return "\n".join(self.lines[-10:])


def wait_for(cond: Any, timeout: float, interval: float = 0.005) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False


def _received(server: FakeServerProcess) -> bool:
    return int(server.stats()["received"]) >= 1


async def run(sizes: Sizes) -> Section:
    firsts: list[float] = []
    claims: list[float] = []
    starts: list[float] = []
    with FakeServerProcess(ttft_s=60.0) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        ws, env = make_workspace(root, server.base_url, HARNESS_WORKER__CONCURRENCY="4")
        full_env = subprocess_env(env, root)
        log(f"B7: enqueueing {sizes.b7_tasks:,} tasks")
        enqueue(ws.database_url(), sizes.b7_tasks)
        w = WorkerProcess(full_env)  # the first worker: gets tasks in flight, then is killed
        if not wait_for(lambda: _received(server), 60):
            w.kill()
            raise RuntimeError("the first worker never called the model:\n" + w.failure())
        w.kill()
        for r in range(sizes.b7_rounds):
            server.reset()
            w = WorkerProcess(full_env)
            ok = wait_for(lambda: _received(server), 60)
            first = time.perf_counter() - w.t0
            wait_for(lambda w=w: "task_claimed" in w.events, 2)  # the log line may lag a bit
            w.kill()
            if not ok:
                raise RuntimeError(f"round {r}: no task ran within 60 s:\n{w.failure()}")
            firsts.append(first)
            claims.append(w.events.get("task_claimed", float("nan")))
            starts.append(w.events.get("worker_started", float("nan")))
    first_s, claim_s, start_s = Spread.of(firsts), Spread.of(claims), Spread.of(starts)
    s = Section(
        "B7",
        "restart after SIGKILL with queued tasks",
        f"A workspace with {sizes.b7_tasks:,} queued tasks; a worker (`harness worker`, "
        "concurrency 4, a subprocess) starts calling the model (the fake server holds every "
        "call for 60 s) and is killed with SIGKILL while its tasks are leased. Then, "
        f"{sizes.b7_rounds} time(s): start a new worker, measure from `Popen` until the first "
        "model call reaches the server, kill it the same way. The restarted worker must see "
        "the dead worker's leases (the process is gone), take them back and claim work.",
    )
    s.add(
        "start -> first task's model call reaches the server",
        first_s.fmt(2, " s"),
        "<= 1 s",
        verdict(first_s.median <= 1.0),
        f"`worker_started` logged at {start_s.median:.2f} s, first `task_claimed` at "
        f"{claim_s.median:.2f} s",
    )
    s.notes.append(
        "Everything from process start counts: the interpreter, imports, settings and "
        "agents, the database (migration check), worker registration, taking back the dead "
        "worker's leases, the first claim, and the first step up to the HTTP request."
    )
    return s
