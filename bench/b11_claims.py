"""B11's database side, no model calls: 1..64 concurrent callers of one operation on
PostgreSQL; operations/s, the server's CPU per operation, what its backends wait on (lock
waits), and the latency the caller sees. Two operations:

- ``claim``: the worker's claim transaction (``harness.steps.claim``, the epoch checked alive,
  one task) on a queue filled beforehand;
- ``ledger``: a call's two ledger transactions, ``ledger.reserve`` then ``ledger.record``
  (an ``ok`` call settling its reservation), every call by one agent: what each model call
  of a run adds, on the day's roll-up rows of its agent and of the workspace.

Claimers are threads, up to 8 to a process and in up to 4 processes (a ``Store`` each, as
workers have), started together once every thread has its connection.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from .common import percentile
from .pgprobe import Probe, empty_database, libpq_url

PROCESSES = 4
CLAIMERS_PER_PROCESS = 8  # more threads than this share a process only past PROCESSES
AGENT = "veblen"
LEASE_S = 60.0
FILL_RUNS = (
    "INSERT INTO runs (goal, agent, created_at, calls, prompt_tokens, cached_tokens, "
    "completion_tokens, reasoning_tokens, cost_usd, estimated_calls) "
    "SELECT 'a queued goal', %(agent)s, %(t)s, 0, 0, 0, 0, 0, 0, 0 FROM generate_series(1, %(n)s)"
)
FILL_TASKS = (
    "INSERT INTO tasks (run_id, agent, input, status, priority, depth, attempts, max_attempts, "
    "claims, not_before, steps, created_at, updated_at) "
    "SELECT g, %(agent)s, 'a queued goal', 'queued', 0, 0, 0, 3, 0, 0, 0, %(t)s, %(t)s "
    "FROM generate_series(1, %(n)s) g"
)


def fill(url: str, n: int) -> None:
    """An empty database, then ``n`` queued one-task runs (ids 1..n), analysed."""
    import psycopg

    empty_database(url)
    params = {"agent": AGENT, "t": time.time(), "n": n}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(FILL_RUNS, params)
        conn.execute(FILL_TASKS, params)
        conn.execute("UPDATE runs SET root_task_id = id")
        conn.execute("ANALYZE runs")
        conn.execute("ANALYZE tasks")


def _claim_tx(conn: Connection, worker_id: int) -> int:
    """The worker's claim transaction (``harness.worker``): claim with state, the worker
    epoch checked alive by the claim."""
    from harness.steps import claim

    claimed = claim(conn, worker_id, LEASE_S, 1)
    if claimed is None:
        raise RuntimeError(f"worker {worker_id} was declared dead")
    return len(claimed)


class _Ledger:
    """One call's ledger work: reserve, then record an ``ok`` answer settling it."""

    def __init__(self, worker_id: int) -> None:
        from harness.ledger import CallContext
        from harness.settings import Settings
        from harness.usage import Budget, CallOutcome, CallRecord, Usage

        self.settings = Settings()
        self.model = self.settings.default_model
        self.ctx = CallContext(AGENT, worker_id=worker_id)
        self.budget, self.unlimited = Budget(tokens=10**15), Budget()
        provider = self.settings.models[self.model].provider
        usage = Usage(prompt_tokens=200, completion_tokens=16)
        self.answer = CallRecord(provider, self.model, CallOutcome.OK, usage, latency_ms=100.0)

    def reserve(self, conn: Connection) -> int:
        from harness import clock, ledger

        rid, _granted = ledger.reserve(
            conn, self.ctx, self.settings, model=self.model, prompt_tokens=200,
            max_tokens=384, min_tokens=16, budget=self.budget,
            workspace_budget=self.unlimited, day=ledger.day_of(clock.now(), self.settings.tz),
        )  # fmt: skip
        return rid

    def record(self, conn: Connection, rid: int) -> None:
        from harness import ledger

        ledger.record(conn, self.ctx, [self.answer], self.settings, reservation_id=rid)

    def __call__(self, store: Any) -> int:
        rid = store.write_sync(self.reserve)
        store.write_sync(self.record, rid)
        return 1


def _operation(kind: str, worker_id: int) -> Callable[[Any], int]:
    """What one caller does once; returns the work done (tasks claimed, calls recorded)."""
    if kind == "ledger":
        return _Ledger(worker_id)
    return lambda store: int(store.write_sync(_claim_tx, worker_id))


def _claimer_process(
    url: str, kind: str, threads: int, sync: tuple[Any, Any, Any], seconds: float, out: Any
) -> None:
    """One process of callers: a Store and a worker id, ``threads`` threads doing ``kind``
    one at a time from ``go`` for ``seconds`` (a claimer stops early on an empty queue)."""
    from harness.store import Store, workers

    ready, go, close = sync
    store = Store.open(url, migrate=False)
    worker_id = store.write_sync(workers.register_worker, threads)
    operation = _operation(kind, worker_id)
    lock = threading.Lock()
    totals: dict[str, Any] = {"claims": 0, "empty": 0, "latencies": [], "end": 0.0}
    barrier = threading.Barrier(threads + 1)

    def claimer() -> None:
        operation(store)  # imports, statements compiled, its own pooled connection: before
        barrier.wait()
        go.wait()
        deadline = time.perf_counter() + seconds
        latencies, claims, empty = [], 0, 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            got = operation(store)
            latencies.append(time.perf_counter() - t0)
            claims += got
            if not got:
                empty += 1
                break  # the queue is empty
        with lock:
            totals["claims"] += claims
            totals["empty"] += empty
            totals["latencies"] += latencies
            totals["end"] = max(totals["end"], time.time())

    pool = [threading.Thread(target=claimer) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    ready.release()
    for t in pool:
        t.join()
    out.put(totals)
    close.wait(120)  # the server's CPU is read before our connections (backends) go
    store.close()


@dataclass
class Level:
    claimers: int
    claims: int
    seconds: float
    pg_cpu_s: float
    busy_cores: float
    latencies: list[float]
    probe: Probe
    drained: bool

    @property
    def per_s(self) -> float:  # claims (or calls) a second
        return self.claims / self.seconds if self.seconds else 0.0

    @property
    def pg_ms_per_claim(self) -> float:
        return self.pg_cpu_s * 1000 / self.claims if self.claims else float("nan")

    def metrics(self) -> dict[str, float]:
        ms = [x * 1000 for x in self.latencies]
        return {
            "claims_per_s": self.per_s,
            "pg_ms": self.pg_ms_per_claim,
            "busy": self.busy_cores,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "lock": self.probe.share("Lock"),
            "lwlock": self.probe.share("LWLock"),
            "io": self.probe.share("IO"),
            "cpu": self.probe.share("CPU"),
            "drained": float(self.drained),
        }


def run_level(
    url: str, kind: str, claimers: int, seconds: float, queued: int, probe: Probe
) -> Level:
    """``claimers`` concurrent callers of ``kind`` (``claim`` or ``ledger``) for
    ``seconds``, on a queue of ``queued`` tasks."""
    fill(url, queued if kind == "claim" else 0)
    ctx = multiprocessing.get_context("spawn")
    procs_n = min(-(-claimers // CLAIMERS_PER_PROCESS), PROCESSES)
    ready, go, close, out = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
    shares = [claimers // procs_n + (i < claimers % procs_n) for i in range(procs_n)]
    procs = [
        ctx.Process(target=_claimer_process, args=(url, kind, n, (ready, go, close), seconds, out))
        for n in shares
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a claimer process did not start")
    probe.reset()
    probe.start()
    t0 = time.time()
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    probe.stop()
    close.set()
    for p in procs:
        p.join(30)
    end = max(r["end"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    return Level(
        claimers=claimers,
        claims=sum(r["claims"] for r in results),
        seconds=end - t0,
        pg_cpu_s=probe.cpu_s,
        busy_cores=probe.busy_cores,
        latencies=latencies,
        probe=probe,
        drained=any(r["empty"] for r in results),
    )
