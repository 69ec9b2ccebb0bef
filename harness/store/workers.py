"""Worker epochs: one ``workers`` row per worker start, whose id owns leases; heartbeats;
telling live workers from dead ones. Functions of a connection."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from sqlalchemy import Connection, and_, insert, select, update

from .. import clock
from .schema import workers

__all__ = [
    "beat_worker",
    "dead_workers",
    "is_alive",
    "mark_stopped",
    "register_worker",
    "stop_worker",
]


def register_worker(conn: Connection, concurrency: int) -> int:
    """A fresh worker epoch (row). Its id owns leases."""
    t = clock.now()
    row = conn.execute(
        insert(workers).values(
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=t,
            heartbeat_at=t,
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
        .values(heartbeat_at=clock.now())
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


def dead_workers(conn: Connection, stale_after_s: float) -> list[int]:
    """Workers known to be gone: stopped, silent past ``stale_after_s``, or (on this host)
    whose process no longer exists. Their leases can be taken back at once."""
    rows = conn.execute(
        select(
            workers.c.id,
            workers.c.host,
            workers.c.pid,
            workers.c.heartbeat_at,
            workers.c.stopped_at,
        ).where(workers.c.stopped_at.is_(None) | (workers.c.stopped_at > clock.now() - 86400))
    ).all()
    host = socket.gethostname()
    cutoff = clock.now() - stale_after_s
    dead = []
    for r in rows:
        gone = r.host == host and r.pid != os.getpid() and not _pid_alive(r.pid)
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
