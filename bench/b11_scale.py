"""B11: scale-out on one PostgreSQL database. 1, 2 and 4 ``harness worker`` processes share a
fixed total concurrency against the fake server (100 ms a call): aggregate runs/s through a
backlog, and claim latency (a run submitted -> its task claimed) under a steady stream of
runs. Then the database side alone (``b11_claims``), no model calls: 1..64 concurrent
claimers (claims/s, the server's CPU per claim, lock waits), and as many callers of a model
call's two ledger transactions.

This machine has 2 cores shared by the workers, the fake server and PostgreSQL; whether a
figure is capped by the machine or by the database shows in each row's context (cores busy,
lock waits). The database side is what a real server's capacity is estimated from
(docs/operations.md, "Capacity").
"""

from __future__ import annotations

import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .b7_restart import enqueue, harness_bin, wait_for
from .b11_claims import run_level
from .common import (
    FakeServerProcess,
    Section,
    Sizes,
    Spread,
    log,
    make_workspace,
    metric,
    percentile,
    ratios,
    rotated,
    subprocess_env,
)
from .pgprobe import Probe, empty_database, fresh_database, libpq_url

TOTAL_CONCURRENCY = 64
LATENCY_S = 0.1
AGENT = "veblen"
OPEN_LOAD = 0.5  # the steady stream: this share of one worker's backlog rate
WARMUP = 0.1  # the stream's first tenth is left out of the latencies (workers backing off idle)


class Workers:
    """``k`` ``harness worker`` processes sharing ``TOTAL_CONCURRENCY`` slots; logs to files."""

    def __init__(self, env: dict[str, str], k: int, folder: Path, *args: str) -> None:
        slots = TOTAL_CONCURRENCY // k
        self.logs = [folder / f"worker-{k}-{i}.log" for i in range(k)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for path in self.logs:
            with path.open("wb") as out:
                cmd = [harness_bin(), "--log-json", "worker", "-c", str(slots), *args]
                self.procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                    )
                )

    def started(self) -> bool:
        return all(b'"worker_started"' in p.read_bytes() for p in self.logs)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc, path in zip(self.procs, self.logs, strict=True):
            try:
                code = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"a worker did not finish:\n{_tail(path)}") from None
            if code != 0:
                raise RuntimeError(f"a worker exited with {code}:\n{_tail(path)}")

    def terminate(self, timeout: float = 60) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        self.wait(timeout)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-10:])


def _children_cpu() -> float:
    """CPU time of this process's children that have exited (and been waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


TASK_TIMES = "SELECT status, created_at, started_at, finished_at FROM tasks"


def _task_times(url: str) -> list[tuple[str, float, float, float]]:
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        return list(conn.execute(TASK_TIMES).fetchall())


def _done(url: str) -> int:
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE status = 'done'").fetchone()
        return int(row[0]) if row else 0


class Scale:
    """The end-to-end arms, on one database and one fake server."""

    def __init__(self, url: str, env: dict[str, str], folder: Path, probe: Probe) -> None:
        self.url, self.env, self.folder, self.probe = url, env, folder, probe

    def start_stop_cpu(self) -> float:
        """CPU seconds of one worker that starts, finds nothing to do and stops: taken off
        the workers' CPU per run (start-up is B7's and B8's, not the run's)."""
        empty_database(self.url)
        cpu0 = _children_cpu()
        Workers(self.env, 1, self.folder, "--until-idle").wait(120)
        return _children_cpu() - cpu0

    def backlog(self, k: int, n: int, idle_cpu: float) -> dict[str, float]:
        """``n`` one-call runs queued, then ``k`` workers ``--until-idle``."""
        empty_database(self.url)
        enqueue(self.url, n, AGENT)
        cpu0 = _children_cpu()
        self.probe.reset()
        self.probe.start()
        t0 = time.perf_counter()
        workers = Workers(self.env, k, self.folder, "--until-idle")
        workers.wait(600)
        wall = time.perf_counter() - t0
        self.probe.stop()
        rows = _task_times(self.url)
        done = [r for r in rows if r[0] == "done"]
        if len(done) != n:
            raise RuntimeError(f"{k} worker(s): {len(done)} of {n} runs done")
        span = max(r[3] for r in done) - min(r[2] for r in done)
        return {
            "runs_per_s": n / span,
            "wall_s": wall,
            "worker_ms": max(_children_cpu() - cpu0 - k * idle_cpu, 0.0) * 1000 / n,
            "pg_ms": self.probe.cpu_s * 1000 / n,
            "busy": self.probe.busy_cores,
            "connections": float(self.probe.peak_connections),
            "lock": self.probe.share("Lock"),
        }

    def stream(self, k: int, rate: float, seconds: float) -> dict[str, float]:
        """``k`` idle workers, then runs submitted one per transaction at ``rate`` a second
        for ``seconds``: the time from each submission to its claim."""
        from harness.store import Store, queue

        empty_database(self.url)
        workers = Workers(self.env, k, self.folder)
        try:
            if not wait_for(workers.started, 120, interval=0.05):
                raise RuntimeError("the workers did not start")
            n = max(int(rate * seconds), 1)
            store = Store.open(self.url, migrate=False)
            try:
                t0 = time.perf_counter()
                for i in range(n):
                    pause = t0 + i / rate - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    store.write_sync(queue.create_run, f"goal {i}", AGENT, max_attempts=3)
            finally:
                store.close()
            if not wait_for(lambda: _done(self.url) >= n, 120, interval=0.05):
                raise RuntimeError(f"{k} worker(s): the stream's runs did not finish")
        finally:
            workers.terminate()
        rows = sorted(_task_times(self.url), key=lambda r: r[1])[int(n * WARMUP) :]
        waits = [(started - created) * 1000 for _, created, started, _ in rows]
        return {
            "p50_ms": percentile(waits, 50),
            "p99_ms": percentile(waits, 99),
            "max_ms": max(waits),
        }


def _end_to_end(sizes: Sizes, url: str, s: Section, probe: Probe) -> float:
    """The backlog and stream arms; returns one worker's backlog runs/s (median)."""
    with FakeServerProcess(ttft_s=LATENCY_S) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        _ws, env = make_workspace(root, server.base_url, HARNESS_DATABASE_URL=url)
        scale = Scale(url, subprocess_env(env, root), Path(tmp), probe)
        ks = sizes.b11_workers
        idle_cpu = scale.start_stop_cpu()
        waits: dict[str, str] = {}
        backlog: dict[str, list[dict[str, float]]] = {str(k): [] for k in ks}
        for r in range(sizes.b11_rounds):
            for k in rotated(ks, r):
                log(f"B11: backlog of {sizes.b11_runs} runs, {k} worker(s), round {r + 1}")
                backlog[str(k)].append(scale.backlog(k, sizes.b11_runs, idle_cpu))
                waits[str(k)] = probe.wait_summary()
        one = metric(backlog, str(ks[0]), "runs_per_s").median
        rate = max(one * OPEN_LOAD, 1.0)
        stream: dict[str, list[dict[str, float]]] = {str(k): [] for k in ks}
        for r in range(sizes.b11_rounds):
            for k in rotated(ks, r):
                log(f"B11: a stream of {rate:.0f} runs/s, {k} worker(s), round {r + 1}")
                stream[str(k)].append(scale.stream(k, rate, sizes.b11_stream_s))
    _backlog_rows(s, backlog, ks, waits)
    _stream_rows(s, stream, ks, rate)
    return one


def _backlog_rows(
    s: Section, res: dict[str, list[dict[str, float]]], ks: tuple[int, ...], waits: dict[str, str]
) -> None:
    for k in ks:
        m: dict[str, Spread] = {name: metric(res, str(k), name) for name in res[str(k)][0]}
        s.add(
            f"{k} worker(s) x {TOTAL_CONCURRENCY // k} slots: aggregate runs/s",
            m["runs_per_s"].fmt(0),
            context=f"worker CPU {m['worker_ms'].median:.2f} ms/run (start-up aside), PostgreSQL "
            f"{m['pg_ms'].median:.2f} ms/run; machine {m['busy'].median:.2f} of 2 cores busy; "
            f"{m['connections'].median:.0f} server connections; lock waits "
            f"{m['lock'].median * 100:.0f}% of active backend samples (last round: "
            f"{waits[str(k)]}); wall with start-up {m['wall_s'].median:.1f} s",
        )
    for k in ks[1:]:
        r = ratios(res, str(k), str(ks[0]), "runs_per_s")
        s.add(
            f"{k} workers / {ks[0]} worker: aggregate runs/s",
            r.fmt() + "x",
            context="the same 64 slots split across processes",
        )


def _stream_rows(
    s: Section, res: dict[str, list[dict[str, float]]], ks: tuple[int, ...], rate: float
) -> None:
    for k in ks:
        p99, p50 = metric(res, str(k), "p99_ms"), metric(res, str(k), "p50_ms")
        worst = metric(res, str(k), "max_ms")
        s.add(
            f"{k} worker(s): claim latency p99, {rate:.0f} runs/s submitted",
            p99.fmt(0, " ms"),
            context=f"p50 {p50.median:.0f} ms, max {worst.median:.0f} ms",
        )


KINDS = {  # operation: (row label, unit, what one unit is)
    "claim": ("claimer(s): claims/s", "claim", "a claim transaction"),
    "ledger": (
        "caller(s): ledger calls/s (reserve + record, one agent)",
        "call",
        "a call's two ledger transactions",
    ),
}


def _database_side(sizes: Sizes, url: str, s: Section, probe: Probe) -> None:
    levels = sizes.b11_claimers
    res: dict[str, list[dict[str, float]]] = {f"{k} {n}": [] for k in KINDS for n in levels}
    waits: dict[str, str] = {}
    for r in range(sizes.b11_rounds):
        for kind in rotated(list(KINDS), r):
            for n in rotated(levels, r):
                log(f"B11: {n} concurrent caller(s) of {kind}, round {r + 1}")
                level = run_level(url, kind, n, sizes.b11_claim_s, sizes.b11_queued, probe)
                res[f"{kind} {n}"].append(level.metrics())
                waits[f"{kind} {n}"] = probe.wait_summary()
    for kind, (label, unit, what) in KINDS.items():
        for n in levels:
            key = f"{kind} {n}"
            m = {name: metric(res, key, name) for name in res[key][0]}
            s.add(
                f"{n} {label}",
                m["claims_per_s"].fmt(0),
                context=f"PostgreSQL CPU {m['pg_ms'].median:.2f} ms/{unit}; {unit} p50 "
                f"{m['p50_ms'].median:.1f} ms, p99 {m['p99_ms'].median:.1f} ms; lock waits "
                f"{m['lock'].median * 100:.1f}% of active backend samples (last round: "
                f"{waits[key]}); machine {m['busy'].median:.2f} of 2 cores busy"
                + ("; the queue ran empty" if m["drained"].high else ""),
            )
        pg = Spread.of([x["pg_ms"] for n in levels for x in res[f"{kind} {n}"]])
        s.add(
            f"PostgreSQL CPU per {unit} ({what}), all levels",
            pg.fmt(2, " ms"),
            context=f"one server core: ~{1000 / max(pg.median, 1e-3):,.0f} {unit}s/s were "
            "nothing else on it (commit flushes and lock waits aside)",
        )


async def run(sizes: Sizes) -> Section:
    s = Section(
        "B11",
        "scale-out on one PostgreSQL database",
        f"A fresh PostgreSQL database (the local server), the fake server answering in "
        f"{LATENCY_S * 1000:.0f} ms. Backlog: {sizes.b11_runs} one-call runs (agent veblen) "
        f"queued, then {', '.join(map(str, sizes.b11_workers))} `harness worker --until-idle` "
        f"processes with {TOTAL_CONCURRENCY} slots split between them; runs/s from the task "
        "rows (first claim to last finish), CPU of the workers (rusage, less what a worker "
        "that starts and stops with nothing to do uses) and of the database's "
        "backends (psutil), waits sampled from `pg_stat_activity` every 20 ms. Stream: the "
        f"same workers idle, then runs submitted one per transaction at {OPEN_LOAD:.0%} of "
        f"one worker's backlog rate for {sizes.b11_stream_s:g} s; claim latency = the task's "
        "`started_at` - `created_at` (the first tenth left out). Database side: "
        f"{', '.join(map(str, sizes.b11_claimers))} claimers (threads, up to 8 a process) "
        "running the worker's claim transaction (`harness.steps.claim`, the epoch checked alive, "
        f"one task) for {sizes.b11_claim_s:g} s on a queue of {sizes.b11_queued:,} tasks; "
        "then as many callers of a call's ledger work (`ledger.reserve`, then `ledger.record` "
        "of an ok answer, two transactions, every call by one agent). "
        f"{sizes.b11_rounds} round(s), arms in rotated order.",
    )
    try:
        with fresh_database("harness_b11") as url:
            probe = Probe(url)
            try:
                _end_to_end(sizes, url, s, probe)
                _database_side(sizes, url, s, probe)
            finally:
                probe.close()
    except Exception as exc:  # the server is not running: say so
        s.add("postgres", "not measured", context=f"{type(exc).__name__}: {exc}"[:300])
        return s
    s.notes += [
        "This machine has 2 cores for the workers, the fake server and PostgreSQL together "
        "(see 'machine ... cores busy'): more worker processes cannot add cores, so runs/s "
        "at 2 workers >= 1x at 1 worker is only to be expected where the cores are there. "
        "The database side measures the queue and the ledger alone.",
        "Lock waits are heavyweight-lock waits (`wait_event_type = 'Lock'`). Claims skip "
        "locked rows (`FOR UPDATE SKIP LOCKED`): what they wait on is commit work, `WALSync` "
        "(the commit's flush) and `WALWrite` (commits queued behind a flush). "
        "`Lock:transactionid` waits are rows locked by another transaction until it ends: "
        "in the backlog and the ledger rows, the day's roll-up rows of the agent and of the "
        "workspace (`usage_daily`), which every reservation and every settlement updates.",
    ]
    return s
