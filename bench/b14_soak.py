"""B14: a worker left running: the SQLite WAL's high-water mark and the worker's memory over
a long soak (``make soak``: one hour), with work queued the whole time."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import psutil

from .b7_restart import WorkerProcess, enqueue, wait_for
from .common import FakeServerProcess, Section, Sizes, log, make_workspace, subprocess_env, verdict

AGENT = "veblen"  # offered no tools: one call per run
CONCURRENCY = 16
BACKLOG = 400  # runs kept queued ahead of the worker
SAMPLE_S = 5.0
MIB = 2**20


_BY_STATUS = "SELECT status, count(*) FROM tasks WHERE parent_id IS NULL GROUP BY status"


def _queued_and_done(db: Path) -> tuple[int, int]:
    """(runs queued or running, runs done), read with plain sqlite3 (a reader, as any)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = dict(conn.execute(_BY_STATUS).fetchall())
    finally:
        conn.close()
    return int(rows.get("queued", 0)) + int(rows.get("running", 0)), int(rows.get("done", 0))


def _rss(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MIB


async def run(sizes: Sizes, minutes: float | None = None) -> Section:
    minutes = sizes.soak_minutes if minutes is None else minutes
    samples: list[tuple[float, float, float, int]] = []  # (t, WAL MiB, RSS MiB, runs done)
    with FakeServerProcess(ttft_s=0.2) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        ws, env = make_workspace(root, server.base_url)
        db = root / "var/harness.db"
        wal = Path(f"{db}-wal")
        enqueue(ws.database_url(), BACKLOG, AGENT)
        w = WorkerProcess(subprocess_env(env, root), "--concurrency", str(CONCURRENCY))
        try:
            if not wait_for(lambda: "worker_started" in w.events, 60):
                raise RuntimeError("the worker did not start:\n" + w.failure())
            t0 = time.monotonic()
            log(f"B14: soaking for {minutes:g} minutes")
            while (elapsed := time.monotonic() - t0) < minutes * 60:
                if w.proc.poll() is not None:
                    raise RuntimeError("the worker died:\n" + w.failure())
                waiting, done = _queued_and_done(db)
                if waiting < BACKLOG // 2:
                    enqueue(ws.database_url(), BACKLOG, AGENT)
                size = wal.stat().st_size / MIB if wal.exists() else 0.0
                samples.append((elapsed, size, _rss(w.pid), done))
                time.sleep(min(SAMPLE_S, max(minutes * 60 - elapsed, 0.01)))
            _, done = _queued_and_done(db)
            samples.append((time.monotonic() - t0, wal.stat().st_size / MIB, _rss(w.pid), done))
        finally:
            w.kill()
    duration = samples[-1][0]
    calls = samples[-1][3]
    high = max(s[1] for s in samples)
    warm = next((s for s in samples if s[0] >= min(60.0, duration / 4)), samples[0])
    rss_end, rss_peak = samples[-1][2], max(s[2] for s in samples)
    growth = (rss_end - warm[2]) / max(duration - warm[0], 1e-9) * 3600
    s = Section(
        "B14",
        "soak: a worker left running",
        f"`harness worker --concurrency {CONCURRENCY}` (a subprocess, SQLite in WAL mode) "
        f"for {duration / 60:.1f} minutes against the fake server (200 ms per call: about "
        f"80 calls/s), the queue kept at least {BACKLOG // 2} one-call runs deep (this "
        f"process enqueues {BACKLOG} at a time and reads the run counts with sqlite3, as a "
        f"dashboard would). Every {SAMPLE_S:g} s: the WAL file's size and the worker's RSS. "
        "(`make soak` runs it for an hour: `python -m bench --only B14 --soak-minutes 60`.)",
    )
    s.add(
        "WAL high-water mark",
        f"{high:,.1f} MiB",
        "<= 128 MiB",
        verdict(high <= 128),
        f"at the end {samples[-1][1]:,.1f} MiB; journal_size_limit 64 MiB",
    )
    s.add(
        "worker RSS: after warm-up, peak, end",
        f"{warm[2]:,.0f} / {rss_peak:,.0f} / {rss_end:,.0f} MiB",
        context=f"warm-up: the first {warm[0]:.0f} s",
    )
    s.add(
        "worker RSS growth after warm-up",
        f"{growth:+,.1f} MiB/hour",
        "<= 20 MiB/hour",
        verdict(growth <= 20) if duration >= 600 else "n/a (under 10 minutes)",
    )
    s.add("runs done", f"{calls:,}", context=f"{calls / max(duration, 1e-9):,.0f} per second")
    return s
