"""Worker processes and fake servers for tests: start them, read their logs, stop them.

``Procs`` (and the ``procs`` fixture, registered in ``conftest.py``) starts ``harness worker``
(the console script) on a temp workspace against a fake server subprocess
(``python -m harness.testing.fakeserver``), configured through ``HARNESS_*`` env. Used by
``tests/test_worker.py`` and ``tests/test_chaos.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.store import Store, queue

HARNESS = Path(sys.executable).with_name("harness")


@dataclass
class FakeProc:
    """A fake server subprocess."""

    proc: subprocess.Popen[str]
    url: str  # base URL, ending in /v1

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/stats", timeout=5).json())

    def reset(self, **knobs: Any) -> None:
        httpx.post(self.url + "/reset", json=knobs, timeout=5).raise_for_status()


@dataclass
class Procs:
    """Starts fake servers and workers; stops whatever is left at the end of the test."""

    tmp: Path
    started: list[subprocess.Popen[Any]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)

    def fake(self, *args: str) -> FakeProc:
        cmd = [sys.executable, "-m", "harness.testing.fakeserver", "--port", "0", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        return FakeProc(proc, f"http://{line.split()[1]}/v1")

    def worker(
        self, ws: Path, fake: FakeProc, *args: str, **settings: Any
    ) -> subprocess.Popen[bytes]:
        """``harness worker ARGS`` on ``ws``; ``settings`` as env, e.g. ``worker__grace_s=1``."""
        n = len(self.logs)
        log = self.tmp / f"worker-{n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(HARNESS), "-w", str(ws), "--log-json", "worker", *args],
                env=worker_env(fake.url, **settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        self.logs[proc.pid] = log
        return proc

    def events(self, proc: subprocess.Popen[Any]) -> list[dict[str, Any]]:
        """The JSON log events a worker wrote so far."""
        out = []
        for line in self.logs[proc.pid].read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:  # the fake server's pipe
                proc.stdout.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def worker_env(base_url: str, **settings: Any) -> dict[str, str]:
    """The environment of a worker process: no inherited HARNESS_* settings, the fake server
    as the default model's provider, quick retries; ``settings`` as ``HARNESS_<KEY>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env |= {  # the embedded model's entries, pointed at the fake server
        "HARNESS_PROVIDERS__LOCAL__BASE_URL": base_url,
        "HARNESS_PROVIDERS__LOCAL__LOCAL": "false",
        "HARNESS_LOCAL__AUTOSTART": "false",
        "HARNESS_WORKER__RETRY_BACKOFF_S": "0.2",
        "HARNESS_PROVIDERS__LOCAL__BACKOFF_BASE_S": "0.05",
        "HARNESS_PROVIDERS__LOCAL__BACKOFF_MAX_S": "0.5",
    }
    env |= {f"HARNESS_{key.upper()}": str(value) for key, value in settings.items()}
    return env


def open_store(ws: Path) -> Store:
    """The workspace's database (created and migrated here, before any worker starts)."""
    return Store.open(f"sqlite:///{ws / 'var' / 'harness.db'}")


def enqueue(st: Store, goal: str, agent: str = "arnold", max_attempts: int = 3) -> int:
    """Submit a run; returns its root task id."""
    _run_id, task_id = st.write_sync(queue.create_run, goal, agent, max_attempts=max_attempts)
    return task_id


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)
