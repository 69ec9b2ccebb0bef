"""B9: whole runs through the real worker, against raw aiohttp making the same calls."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    FakeServerProcess,
    Section,
    Sizes,
    Spread,
    interleave,
    log,
    make_workspace,
    ratios,
    subprocess_env,
    verdict,
)
from .pgprobe import fresh_database

LATENCY_S = 0.1
CHILDREN = 4  # a delegated run: the chief's call, one call per child, the chief's answer
CALLS_PER_RUN = {"one-call": 1, "delegated": 2 + CHILDREN}
AGENT = {"one-call": "veblen", "delegated": "arnold"}

# the baseline: the same number of calls at the same concurrency, nothing else (a subprocess,
# like the worker, so both pay an interpreter's start-up)
RAW = """
import asyncio, json, sys
import aiohttp

URL, N, C = sys.argv[1] + "/chat/completions", int(sys.argv[2]), int(sys.argv[3])
BODY = json.dumps({"model": "local", "max_tokens": 180, "messages": [
    {"role": "system", "content": "You are R. Veblen, the team's book researcher. " * 20},
    {"role": "user", "content": "goal: brief me on the economics of inference"}]})

async def main():
    left = iter(range(N))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=C)) as s:
        async def slot():
            for _ in left:
                async with s.post(URL, data=BODY,
                                  headers={"Content-Type": "application/json"}) as r:
                    json.loads(await r.read())
        await asyncio.gather(*(slot() for _ in range(C)))

asyncio.run(main())
"""


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for ``proc``; its exit status and the CPU seconds (user + system) it used."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _timed_process(args: list[str], env: dict[str, str], what: str) -> tuple[float, float]:
    """Run ``args`` to its end: (wall seconds from Popen to exit, CPU seconds it used). Its
    output goes to a file (a pipe left unread would stall a worker that logs a lot)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        rc, cpu = _wait(proc)
        wall = time.perf_counter() - t0
        if rc != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with {rc}:\n{tail}")
    return wall, cpu


class Backend:
    """One database for the harness arms: a SQLite file, or a PostgreSQL database made afresh
    for every measured round (``pgprobe.fresh_database``), all dropped by :meth:`drop_all`."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        self._made = contextlib.ExitStack()

    def fresh(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.root / f'b9-{uuid.uuid4().hex[:8]}.db'}"
        return self._made.enter_context(fresh_database("harness_b9"))

    def drop_all(self) -> None:
        self._made.close()


def _enqueue(url: str, agent: str, n: int) -> None:
    from harness.store import Store, queue

    st = Store.open(url)
    try:
        st.write_sync(
            lambda conn: [
                queue.create_run(conn, f"brief me on the economics of inference, {i}", agent,
                                 max_attempts=3)
                for i in range(n)
            ]
        )  # fmt: skip
    finally:
        st.close()


def _check(url: str, n: int, calls_per_run: int) -> None:
    """Every run done, every call in the ledger: the arm did the work it is timed for."""
    from sqlalchemy import func, select

    from harness.store import Store
    from harness.store.schema import calls, tasks

    st = Store.open(url, migrate=False)
    try:
        done, made = st.read_sync(
            lambda c: (
                c.execute(
                    select(func.count()).where(
                        tasks.c.status == "done", tasks.c.parent_id.is_(None)
                    )
                ).scalar_one(),
                c.execute(select(func.count()).select_from(calls)).scalar_one(),
            )
        )
    finally:
        st.close()
    if done != n or made != n * calls_per_run:
        raise RuntimeError(f"B9: {done}/{n} runs done, {made}/{n * calls_per_run} calls made")


def _harness_arm(
    backend: Backend, env: dict[str, str], kind: str, n: int, concurrency: int
) -> Callable[[], Any]:
    worker = [str(Path(sys.executable).parent / "harness"), "--log-json", "worker"]
    args = [*worker, "--concurrency", str(concurrency), "--until-idle"]

    async def arm() -> dict[str, float]:
        url = backend.fresh()
        run_env = {**env, "HARNESS_DATABASE_URL": url}
        _enqueue(url, AGENT[kind], 0)  # migrated, then the same start-up with no work
        idle_wall, idle_cpu = _timed_process(args, run_env, "an idle worker")
        _enqueue(url, AGENT[kind], n)
        wall, cpu = _timed_process(args, run_env, "the worker")
        _check(url, n, CALLS_PER_RUN[kind])
        return {
            "wall": wall,
            "runs_per_s": n / wall,
            "cpu_ms_per_run": (cpu - idle_cpu) / n * 1000,
            "startup_s": idle_wall,
        }

    return arm


def _raw_arm(base_url: str, env: dict[str, str], calls: int, concurrency: int) -> Any:
    args = [sys.executable, "-c", RAW, base_url, str(calls), str(concurrency)]

    async def arm() -> dict[str, float]:
        wall, cpu = _timed_process(args, env, "raw aiohttp")
        return {"wall": wall, "cpu_ms_per_call": cpu / calls * 1000}

    return arm


def _workspace(root: Path, base_url: str) -> dict[str, str]:
    _, env = make_workspace(root, base_url, HARNESS_WORKER__CONCURRENCY="64")
    chief = root / "agents" / "arnold.md"  # a delegated run: exactly CHILDREN children
    text = re.sub(r"(?m)^min_delegations: \d+$", f"min_delegations: {CHILDREN}", chief.read_text())
    chief.write_text(text, encoding="utf-8")
    return subprocess_env(env, root)


async def run(sizes: Sizes) -> Section:
    s = Section(
        "B9",
        "whole runs through the worker",
        f"N runs are put in the queue, then `harness worker --concurrency C --until-idle` (a "
        f"subprocess, JSON logs) works them against the fake server answering each call in "
        f"{LATENCY_S * 1000:.0f} ms. One-call runs: one agent (veblen), one model call. "
        f"Delegated runs: the chief (arnold) delegates to {CHILDREN} specialists in one step, "
        f"each answers in one call, the chief writes the answer: {CALLS_PER_RUN['delegated']} "
        "calls. The baseline is raw aiohttp (a subprocess too) making the same number of calls "
        "at the same concurrency, nothing else. Wall: from `Popen` to exit, for both (start-up "
        "included). The worker's CPU per run: its CPU time (`os.wait4` rusage) minus that of "
        "the same worker started on an empty queue (start-up and shutdown), divided by N. "
        "Each round makes a new SQLite file or PostgreSQL database; every run is checked done "
        "and every call recorded. Arms interleaved, order rotated.",
    )
    plan = [
        (kind, c, n)
        for kind, n in (("one-call", sizes.b9_runs), ("delegated", sizes.b9_delegated))
        for c in sizes.b9_concurrency
    ]
    backends = ["sqlite", "postgres"]
    with FakeServerProcess(ttft_s=LATENCY_S) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = _workspace(root / "ws", server.base_url)
        made = {b: Backend(b, root) for b in backends}
        try:
            made["postgres"].fresh()
            made["postgres"].drop_all()
        except Exception as exc:  # no server: SQLite only
            backends = ["sqlite"]
            s.notes.append(f"PostgreSQL not measured: {type(exc).__name__}: {exc}"[:200])
        try:
            for kind, c, n in plan:
                log(f"B9: {n:,} {kind} runs at {c} in flight")
                arms: dict[str, Any] = {
                    "raw": _raw_arm(server.base_url, env, n * CALLS_PER_RUN[kind], c)
                }
                for b in backends:
                    arms[b] = _harness_arm(made[b], env, kind, n, c)
                res = await interleave(arms, sizes.b9_rounds, warmup=False)
                for b in backends:
                    made[b].drop_all()
                _rows(s, res, kind, c, n, backends)
        finally:
            for made_db in made.values():
                made_db.drop_all()
    s.notes.append(
        "Targets (issue 18): at 64 in flight, wall <= 1.2x raw on SQLite and <= 1.3x on "
        "PostgreSQL for one-call runs; the worker's CPU per one-call run <= 1.0 ms. At 256 in "
        "flight the 100 ms server would allow 2,560 calls/s: there the worker's CPU per run "
        "sets the pace (figures for context)."
    )
    return s


def _rows(
    s: Section,
    res: dict[str, list[dict[str, float]]],
    kind: str,
    c: int,
    n: int,
    backends: list[str],
) -> None:
    raw = Spread.of([r["wall"] for r in res["raw"]])
    for b in backends:
        wall = ratios(res, b, "raw", "wall")
        target = {"sqlite": 1.2, "postgres": 1.3}[b] if (kind, c) == ("one-call", 64) else None
        rps = Spread.of([r["runs_per_s"] for r in res[b]])
        start = Spread.of([r["startup_s"] for r in res[b]])
        s.add(
            f"{kind}, {c} in flight, {b}: wall / raw",
            wall.fmt(2, "x"),
            f"<= {target}x" if target else "",
            verdict(wall.median <= target) if target else "",
            f"{n:,} runs; {rps.fmt(0)} runs/s; raw {raw.fmt(2, ' s')}; worker start-up and "
            f"shutdown alone {start.fmt(2, ' s')}",
        )
        cpu = Spread.of([r["cpu_ms_per_run"] for r in res[b]])
        per_call = cpu.scaled(1 / CALLS_PER_RUN[kind])
        aim = kind == "one-call" and c == 64
        s.add(
            f"{kind}, {c} in flight, {b}: worker CPU per run",
            cpu.fmt(2, " ms"),
            "<= 1.0 ms" if aim else "",
            verdict(cpu.median <= 1.0) if aim else "",
            f"{per_call.median:.2f} ms per call"
            + f"; raw aiohttp {Spread.of([r['cpu_ms_per_call'] for r in res['raw']]).median:.2f}"
            " ms per call",
        )
