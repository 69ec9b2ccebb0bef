"""Worker epochs: one ``workers`` row per worker start, whose id owns leases; heartbeats;
telling live workers from dead ones. Functions of a connection.

A worker is known dead when it stopped, when it has been silent past a stale limit (measured
on the database's clock on PostgreSQL, see ``engine.lease_now``), or when its process is gone.
The last is checked by PID only where PIDs mean the same thing as ours: the row's ``node``
names the kernel boot, the PID namespace and the process's start time, so containers that
share a hostname (host networking) never take each other for dead, and a reused PID is not
taken for the old process. Elsewhere heartbeats alone decide.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, and_, insert, select, update

from .. import clock
from .engine import lease_clock, lease_now
from .schema import workers

__all__ = [
    "beat_worker",
    "dead_workers",
    "is_alive",
    "mark_stopped",
    "node",
    "register_worker",
    "stop_worker",
]


def _start_ticks(pid: int | str) -> str | None:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[
        19
    ]  # fields after the command name, which may hold spaces


def node() -> str | None:
    """``boot id:PID namespace:start ticks`` of this process, or None where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    start = _start_ticks("self")
    return f"{boot}:{namespace}:{start}" if start else None


def register_worker(conn: Connection, concurrency: int) -> int:
    """A fresh worker epoch (row). Its id owns leases."""
    t = clock.now()
    row = conn.execute(
        insert(workers).values(
            host=socket.gethostname(),
            pid=os.getpid(),
            node=node(),
            started_at=t,
            heartbeat_at=lease_clock(conn),
            concurrency=concurrency,
        )
    )
    return int(row.inserted_primary_key[0])  # type: ignore[index]


def beat_worker(conn: Connection, worker_id: int) -> bool:
    """Record a heartbeat. False when this worker was declared dead meanwhile (it was paused
    or cut off too long): its leases are gone and it must start a fresh epoch."""
    result = conn.execute(
        update(workers)
        .where(workers.c.id == worker_id, workers.c.stopped_at.is_(None))
        .values(heartbeat_at=lease_clock(conn))
    )
    return result.rowcount == 1


def is_alive(conn: Connection, worker_id: int) -> bool:
    """Whether this epoch still counts as alive (not stopped, nor declared dead)."""
    stmt = select(workers.c.id).where(workers.c.id == worker_id, workers.c.stopped_at.is_(None))
    return conn.execute(stmt).first() is not None


def stop_worker(conn: Connection, worker_id: int) -> None:
    conn.execute(update(workers).where(workers.c.id == worker_id).values(stopped_at=clock.now()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_gone(host: str, pid: int, their_node: str | None, mine: str | None) -> bool:
    """Whether the process of a worker row is known to be gone, from this process's view."""
    if pid == os.getpid() and their_node == mine:
        return False
    if their_node is None or mine is None:  # no /proc: the old rule, by hostname
        return host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid)
    boot, namespace, start = their_node.split(":")
    my_boot, my_namespace, _ = mine.split(":")
    if (boot, namespace) != (my_boot, my_namespace):
        return False  # another machine, boot or PID namespace: heartbeats decide
    return _start_ticks(pid) != start  # gone, or the PID now names another process


def dead_workers(conn: Connection, stale_after_s: float) -> list[int]:
    """Workers known to be gone: stopped, silent past ``stale_after_s``, or whose process is
    gone (see the module docstring). Their leases can be taken back at once."""
    rows = conn.execute(
        select(
            workers.c.id,
            workers.c.host,
            workers.c.pid,
            workers.c.node,
            workers.c.heartbeat_at,
            workers.c.stopped_at,
        ).where(workers.c.stopped_at.is_(None) | (workers.c.stopped_at > clock.now() - 86400))
    ).all()
    cutoff = lease_now(conn) - stale_after_s
    mine = node()
    dead = []
    for r in rows:
        gone = _process_gone(r.host, r.pid, r.node, mine)
        if r.stopped_at is not None or r.heartbeat_at < cutoff or gone:
            dead.append(r.id)
    return dead


def mark_stopped(conn: Connection, worker_ids: Sequence[int]) -> None:
    if worker_ids:
        conn.execute(
            update(workers)
            .where(and_(workers.c.id.in_(list(worker_ids)), workers.c.stopped_at.is_(None)))
            .values(stopped_at=clock.now())
        )
