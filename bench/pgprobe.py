"""What PostgreSQL does for one database while a benchmark runs: its backends' CPU time, and
what they wait on (``pg_stat_activity`` sampled from a thread). Only that database's client
backends count (the server may be serving others meanwhile); the server's shared processes
(WAL writer, checkpointer) are left out.

Also a fresh database per benchmark run (created from the admin URL's database, dropped
after) and emptying it between arms.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

PG_ADMIN = os.environ.get("HARNESS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
WAIT_KINDS = ("Lock", "LWLock", "IO", "CPU")  # CPU: active, waiting on nothing
ACTIVITY = (
    "SELECT pid, state, coalesce(wait_event_type, 'CPU'), wait_event FROM pg_stat_activity "
    "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new database on the admin URL's server, migrated; yields its ``postgresql+psycopg``
    URL, and drops it after."""
    import psycopg

    from harness.store import Store

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    try:
        Store.open(url).close()
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def empty_database(url: str) -> None:
    """Every harness table emptied, ids restarting at 1 (a queue without history)."""
    import psycopg

    from harness.store.schema import metadata

    names = ", ".join(t.name for t in metadata.sorted_tables)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


@dataclass
class Probe:
    """Samples one database's backends every ``interval_s`` while started; ``cpu_s`` is the
    CPU time they used meanwhile (a backend that started meanwhile counts from zero: its
    start-up is part of the work; one that ended between two readings of CPU loses its
    last ``interval_s * cpu_every`` at most)."""

    url: str
    interval_s: float = 0.02
    cpu_every: int = 10  # CPU is read every this many samples (reading /proc costs)
    waits: Counter[str] = field(default_factory=Counter)  # active backends' samples by kind
    events: Counter[str] = field(default_factory=Counter)  # (kind: event) of waiting ones
    idle: int = 0  # samples of backends idle (between transactions) or idle in transaction
    peak_connections: int = 0
    cpu_s: float = 0.0
    busy_cores: float = 0.0  # the whole machine's, over the span
    _first: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import psycopg

        self._conn: Any = psycopg.connect(libpq_url(self.url), autocommit=True)
        self._db = self.url.rsplit("/", 1)[1]
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._stop.clear()
        self._first.clear()
        self._last.clear()
        self._procs.clear()
        self._sample(count=False)
        self._read_cpu(first=True)
        self._machine0 = psutil.cpu_times()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Probe:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read_cpu()
        wall = time.perf_counter() - self._t0
        m0, m1 = self._machine0, psutil.cpu_times()
        busy = (m1.user + m1.system + m1.nice) - (m0.user + m0.system + m0.nice)
        self.busy_cores = busy / wall if wall else 0.0
        self.cpu_s = sum(self._last[pid] - self._first.get(pid, 0.0) for pid in self._last)
        return self

    def close(self) -> None:
        self._conn.close()

    def reset(self) -> None:
        self.waits.clear()
        self.events.clear()
        self.idle = 0
        self.peak_connections = 0

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval_s):
            self._sample()
            n += 1
            if n % self.cpu_every == 0:
                self._read_cpu()

    def _sample(self, count: bool = True) -> None:
        rows = self._conn.execute(ACTIVITY, (self._db,)).fetchall()
        for pid, state, kind, event in rows:
            if pid not in self._procs:
                with contextlib.suppress(psutil.Error):
                    self._procs[pid] = psutil.Process(pid)
            if not count:
                continue
            if state == "active":
                self.waits[kind] += 1
                if kind != "CPU":
                    self.events[f"{kind}:{event}"] += 1
            else:
                self.idle += 1
        self.peak_connections = max(self.peak_connections, len(rows))

    def _read_cpu(self, first: bool = False) -> None:
        for pid, proc in list(self._procs.items()):
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            cpu = float(t.user + t.system)
            if first:
                self._first[pid] = cpu
            self._last[pid] = cpu

    @property
    def active_samples(self) -> int:
        return sum(self.waits.values())

    def share(self, kind: str) -> float:
        """Share of active backend samples in a wait ``kind`` (or on CPU)."""
        n = self.active_samples
        return self.waits[kind] / n if n else 0.0

    def wait_summary(self) -> str:
        """``Lock 0.0%, LWLock 1.2%, IO 8.0%, CPU 88%`` and the commonest waits."""
        parts = [f"{k} {self.share(k) * 100:.1f}%" for k in WAIT_KINDS]
        top = ", ".join(
            f"{e} {c / max(self.active_samples, 1) * 100:.0f}%"
            for e, c in self.events.most_common(2)
        )
        return "; ".join(parts) + (f" (most: {top})" if top else "")
