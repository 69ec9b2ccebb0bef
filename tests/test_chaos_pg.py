"""Chaos on PostgreSQL: the database drops out under the workers, and a worker is killed.

Two ``harness worker`` processes reach PostgreSQL through a TCP proxy written here (on
127.0.0.1), which the test uses to drop every connection and refuse new ones for a few
seconds, several times, while runs are in flight; one worker is SIGKILLed and a new one
started meanwhile. The runs are the same as in ``test_chaos.py`` (arnold delegates to veblen
and simmons, who answer; arnold answers: three tasks, four model steps each) against the
fake model server with a few faults of its own.

Afterwards: every run done with exactly its three tasks, no worker died on its own, no step
ran twice and none was lost (transcripts and ``ok`` rows agree), and the ledger against the
server: ``ok <= served <= ok + unsettled`` with ``unsettled`` no more than the calls in flight
at the kill. Leases (10 s) outlast the outages (at most 3 s), so no task changes hands while
its worker lives: a stretch of database outage is waited out, not paid twice.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.engine import make_url

from harness.store import Store
from harness.store.schema import TaskStatus, calls, messages, reservations, tasks, usage_daily
from harness.usage import CallOutcome
from tests.processes import Procs, enqueue, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RUNS = 6
DROPS = 4
SEED = 20261202
FAKE = {
    "--ttft-s": "0.15",
    "--ttft-jitter-s": "0.25",
    "--completion-tokens": "12",
    "--seed": "7",
    "--p-500": "0.03",
    "--p-no-usage": "0.05",
}
CONCURRENCY = 3
SETTINGS = {
    "worker__concurrency": CONCURRENCY,
    "worker__lease_s": 10,
    "worker__max_attempts": 1000,
    "worker__retry_backoff_s": 0.2,
    "worker__idle_poll_max_s": 0.2,
    "providers__local__timeout_s": 5,
    "providers__local__max_retries": 6,
    "providers__local__max_concurrency": CONCURRENCY,
    "models__local__max_tokens": 16,
    "models__local__tools": "json",
}


class Proxy:
    """A TCP proxy to ``upstream``; ``drop(s)`` cuts every connection and refuses new ones
    (accepts and closes them) for ``s`` seconds."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.drops = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._open.discard(s)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def drop(self, seconds: float) -> None:
        self.down = True
        self.drops += 1
        with self._lock:
            live = list(self._open)
        self._close(*live)
        time.sleep(seconds)
        self.down = False

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            live = list(self._open)
        self._close(*live)


def test_database_outages_and_a_kill_lose_no_work_and_charge_nothing_twice(
    procs: Procs, workspace_dir: Path, pg_url: str
) -> None:
    rng = random.Random(SEED)
    url = make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    fake = procs.fake(*[part for item in FAKE.items() for part in item])
    st = Store.open(pg_url)
    roots = [enqueue(st, f"goal {i}", "arnold", max_attempts=1000) for i in range(RUNS)]
    env = {**SETTINGS, "database_url": proxied}
    live = [procs.worker(workspace_dir, fake, **env) for _ in range(2)]
    for w in live:
        wait_for(partial(_started, procs, w), what="a worker to start")
    in_flight_at_kill = 0
    orphaned: set[int] = set()  # reservations the killed worker held
    for i in range(DROPS):
        time.sleep(rng.uniform(0.8, 2.0))
        proxy.drop(rng.uniform(1.5, 3.0))
        if i == 1:  # and a kill, between two outages
            in_flight_at_kill = fake.stats()["in_flight"]
            live[0].send_signal(signal.SIGKILL)
            live[0].wait()
            epochs = {e["worker_id"] for e in procs.events(live[0]) if "worker_id" in e}
            orphaned |= set(st.read_sync(_reservation_ids, epochs))
            live[0] = procs.worker(workspace_dir, fake, **env)
    wait_for(lambda: st.read_sync(_all_done, roots), timeout=120, what="every run to finish")
    died = [w.poll() for w in live]
    for w in live:
        w.send_signal(signal.SIGTERM)
    codes = [w.wait(timeout=60) for w in live]
    proxy.close()
    assert died == [None, None]  # no worker died on its own (through the outages)
    assert codes == [0, 0]
    outages = [e for w in live for e in procs.events(w) if e["event"] == "store_write_retry"]
    assert proxy.drops == DROPS and outages, "the outages did reach the workers' writes"

    rows = st.read_sync(lambda c: c.execute(select(tasks)).mappings().all())
    by_run: dict[int, list[str]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r["agent"])
        assert r["status"] == TaskStatus.DONE, dict(r)
    assert sorted(map(sorted, by_run.values())) == [["arnold", "simmons", "veblen"]] * RUNS
    for r in rows:  # no step twice, none lost
        said = [m for m in st.read_sync(_transcript, r["id"]) if m["role"] == "assistant"]
        assert len(said) == (2 if r["agent"] == "arnold" else 1), r["id"]
        assert sorted(int(str(m["call_id"])) for m in said) == st.read_sync(_ok_rows, r["id"])

    stats = fake.stats()
    served = stats["completions"]
    ok = st.read_sync(_count, calls.c.outcome == CallOutcome.OK)
    unsettled = st.read_sync(_count, calls.c.outcome == CallOutcome.UNSETTLED)
    report = f"{stats=} {ok=} {unsettled=} {in_flight_at_kill=} {len(orphaned)=}"
    assert ok == RUNS * 4, report
    assert ok <= served <= ok + unsettled, report
    assert unsettled == len(orphaned) <= CONCURRENCY, report
    left = select(func.count()).select_from(reservations)
    assert st.read_sync(lambda c: c.execute(left).scalar()) == 0
    held = select(func.sum(usage_daily.c.reserved_tokens))
    assert not st.read_sync(lambda c: c.execute(held).scalar())
    st.close()


def _started(procs: Procs, worker: Any) -> bool:
    return any(e["event"] == "worker_started" for e in procs.events(worker))


def _all_done(conn: Connection, roots: list[int]) -> bool:
    stmt = select(tasks.c.status).where(tasks.c.id.in_(roots))
    return all(s == TaskStatus.DONE for s in conn.execute(stmt).scalars())


def _transcript(conn: Connection, task_id: int) -> list[dict[str, object]]:
    stmt = select(messages).where(messages.c.task_id == task_id).order_by(messages.c.seq)
    return [dict(m) for m in conn.execute(stmt).mappings()]


def _ok_rows(conn: Connection, task_id: int) -> list[int]:
    stmt = select(calls.c.id).where(calls.c.task_id == task_id, calls.c.outcome == "ok")
    return sorted(conn.execute(stmt).scalars())


def _reservation_ids(conn: Connection, worker_ids: set[int]) -> list[int]:
    stmt = select(reservations.c.id).where(reservations.c.worker_id.in_(worker_ids))
    return [int(i) for i in conn.execute(stmt).scalars()]


def _count(conn: Connection, *where: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(calls).where(*where)).scalar() or 0)
