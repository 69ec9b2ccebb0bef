"""B3 (throughput and p99 under concurrency), B4 (metered tokens per second), and the check
that the fake server is not the bottleneck."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from .clients import Client, Harness, RawAiohttp, messages
from .common import (
    CpuMeter,
    FakeServerProcess,
    Section,
    Sizes,
    diffs,
    interleave,
    log,
    metric,
    percentile,
    ratios,
    verdict,
)

B3_LATENCY_S = 0.1


async def _burst(
    client: Client, slots: int, per_slot: int, spread_s: float = 0.0
) -> tuple[float, list[float], int]:
    """``slots`` concurrent loops of ``per_slot`` calls, their starts spread evenly over
    ``spread_s``; wall time, latencies, tokens."""
    latencies: list[float] = []
    tokens = 0

    async def loop(offset: float) -> None:
        nonlocal tokens
        if offset:
            await anyio.sleep(offset)
        for _ in range(per_slot):
            t0 = time.perf_counter()
            got = await client.call()  # (not ``tokens += await ...``: that loses updates)
            latencies.append(time.perf_counter() - t0)
            tokens += got

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(slots):
            tg.start_soon(loop, spread_s * i / slots)
    return time.perf_counter() - t0, latencies, tokens


def _arm(
    client: Client, slots: int, per_slot: int, server: FakeServerProcess, spread_s: float = 0.0
) -> Any:
    async def run() -> dict[str, float]:
        with CpuMeter(server) as m:
            wall, lat, tokens = await _burst(client, slots, per_slot, spread_s)
        n = len(lat)
        return {
            "throughput": n / wall,
            "tokens_per_s": tokens / wall,
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "server_busy": m.server_busy,
            "client_busy": m.client_busy,
            "server_us_per_call": m.server_cpu / n * 1e6,
        }

    return run


# -- the fake server's own ceiling ----------------------------------------------------------


async def server_ceiling(sizes: Sizes, server: FakeServerProcess) -> Section:
    """Raw aiohttp at high concurrency against the zero-latency server: how many calls per
    second the server can answer, and how busy it is doing so."""
    s = Section(
        "Server",
        "the fake server is not the bottleneck",
        "The fake server (`python -m harness.testing.fakeserver`, a separate process) is driven "
        f"by raw aiohttp, zero latency, {sizes.ceiling_calls} calls at 64 and at 256 concurrent "
        "calls, 16-token and 2k-token answers. Its CPU time per call gives its ceiling on one "
        "core (1 / CPU per call); every benchmark also records the server's share of a core "
        "during each arm.",
    )
    rows = []
    for completion, prompt_chars in ((16, 200), (450, 6000)):
        server.reset(ttft_s=0.0, token_delay_s=0.0, completion_tokens=completion)
        for slots in (64, 256):
            client = RawAiohttp(server.base_url, messages(prompt_chars), concurrency=slots)
            await client.start()
            try:
                await _burst(client, slots, 2)
                per = max(sizes.ceiling_calls // slots, 1)
                with CpuMeter(server) as m:
                    wall, lat, _ = await _burst(client, slots, per)
            finally:
                await client.close()
            n = len(lat)
            ceiling = n / m.server_cpu if m.server_cpu else float("inf")
            rows.append((completion, slots, n / wall, m.server_busy, ceiling, m.client_busy))
    for completion, slots, rate, busy, ceiling, client_busy in rows:
        s.add(
            f"{completion}-token answers, {slots} concurrent",
            f"{rate:,.0f} calls/s",
            context=f"server {busy:.0%} of a core (ceiling ≈ {ceiling:,.0f} calls/s); "
            f"client {client_busy:.0%}",
        )
    need = 256 / B3_LATENCY_S
    small = [r for r in rows if r[0] == 16]
    s.notes.append(
        f"B3's most demanding level (256 calls in flight, {B3_LATENCY_S * 1000:.0f} ms each) "
        f"needs at most {need:,.0f} calls/s; the server's CPU per call puts its ceiling on one "
        f"core at about {min(r[4] for r in small):,.0f} calls/s for those answers. In these "
        f"runs the server used at most {max(r[3] for r in rows):.0%} of a core and the "
        f"client at most {max(r[5] for r in rows):.0%}: where neither is near 100%, the rest "
        "of the machine (other work on the two shared cores) set the rate, not the server. "
        "The server does the same work for every arm (same requests), so it cannot favour one."
    )
    busiest = max(rows, key=lambda r: r[3])
    if busiest[3] >= 0.85:
        s.notes.append(
            f"At zero latency and {busiest[1]} calls in flight, raw aiohttp drove the server to "
            f"{busiest[3]:.0%} of a core ({busiest[2]:,.0f} calls/s): near its ceiling. A raw "
            "baseline running there (B4's) is capped by the server, which flatters ratios "
            "against it; B3 (100 ms latency) stays below the ceiling, and B4's judged figure "
            "is absolute."
        )
    return s


# -- B3 -----------------------------------------------------------------------------------------


async def run_b3(sizes: Sizes, server: FakeServerProcess) -> Section:
    server.reset(ttft_s=B3_LATENCY_S, token_delay_s=0.0, completion_tokens=16)
    s = Section(
        "B3",
        f"throughput and p99 under concurrency, server latency {B3_LATENCY_S * 1000:.0f} ms",
        f"At each level C, C concurrent loops each make {sizes.b3_calls_per_slot} sequential "
        f"calls (server answers after {B3_LATENCY_S * 1000:.0f} ms); the loops start spread "
        "evenly over one latency period, as independent tasks would, rather than in lockstep "
        f"(all C answers arriving in the same instant). {sizes.rounds} rounds, arms "
        "interleaved. Throughput = calls / wall time; p99 of per-call latency within a round. "
        "Ratio = harness / raw aiohttp per round; added p99 = harness p99 − raw p99.",
    )
    msgs = messages(200)
    for level in sizes.b3_levels:
        clients: list[Client] = [
            RawAiohttp(server.base_url, msgs, concurrency=level),
            Harness(server.base_url, msgs, concurrency=level),
        ]
        for c in clients:
            await c.start()
        try:
            arms = {
                c.name: _arm(c, level, sizes.b3_calls_per_slot, server, B3_LATENCY_S)
                for c in clients
            }
            log(f"B3: level {level}, {sizes.rounds} rounds")
            res = await interleave(arms, sizes.rounds)
        finally:
            for c in clients:
                await c.close()
        r = ratios(res, "harness", "raw aiohttp", "throughput")
        thr = metric(res, "harness", "throughput")
        raw_thr = metric(res, "raw aiohttp", "throughput")
        p99 = diffs(res, "harness", "raw aiohttp", "p99_ms")
        raw_p99 = metric(res, "raw aiohttp", "p99_ms")
        busy = metric(res, "harness", "client_busy")
        srv = max(metric(res, name, "server_busy").high for name in res)
        s.add(
            f"C={level}: throughput harness / raw",
            r.fmt() + "x",
            ">= 0.8x",
            verdict(r.median >= 0.8),
            f"{thr.median:,.0f} vs {raw_thr.median:,.0f} calls/s; harness process "
            f"{busy.median:.0%} busy; server ≤ {srv:.0%} of a core",
        )
        target = level == 64
        s.add(
            f"C={level}: added p99",
            p99.fmt(1, " ms"),
            "<= 10 ms" if target else "",
            verdict(p99.median <= 10) if target else "",
            f"raw p99 {raw_p99.median:.1f} ms",
        )
    return s


# -- B4 -----------------------------------------------------------------------------------------


class MeteredHarness:
    """A call as the loop makes it, metered: reserve budget, call, record the ledger row and
    roll-ups (settling the reservation), each ledger write in its own transaction."""

    name = "harness, metered"

    def __init__(
        self, base_url: str, msgs: list[dict[str, str]], db_url: str, concurrency: int
    ) -> None:
        self.inner = Harness(base_url, msgs, concurrency=concurrency)
        self.db_url = db_url
        self.store: Any = None

    async def start(self) -> None:
        from harness.ledger import CallContext
        from harness.store import Store

        await self.inner.start()
        self.store = Store.open(self.db_url)
        self.ctx = CallContext(agent="veblen", run_id=None, task_id=None, worker_id=1)

    async def call(self) -> int:
        from harness import ledger
        from harness.usage import Budget

        settings = self.inner.settings
        day = ledger.day_of(time.time(), settings.tz)
        rid, _ = await self.store.write(
            ledger.reserve,
            self.ctx,
            settings,
            model="fake",
            prompt_tokens=2000,
            max_tokens=500,
            min_tokens=500,
            budget=Budget(),
            workspace_budget=Budget(),
            day=day,
        )
        completion = await self.inner.provider.complete(self.inner.request)
        await self.store.write(
            ledger.record, self.ctx, completion.records, settings, reservation_id=rid
        )
        return int(completion.usage.total_tokens)

    async def close(self) -> None:
        await self.inner.close()
        if self.store is not None:
            self.store.close()


async def run_b4(sizes: Sizes, server: FakeServerProcess) -> Section:
    # ~1,550 prompt tokens (the server counts body bytes / 4) + 450 completion tokens
    server.reset(ttft_s=0.0, token_delay_s=0.0, completion_tokens=450)
    msgs = messages(6000)
    c = sizes.b4_concurrency
    per_slot = max(sizes.b4_calls // c, 1)
    with tempfile.TemporaryDirectory(prefix="harness-b4-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'ledger.db'}"
        clients: list[Any] = [
            RawAiohttp(server.base_url, msgs, concurrency=c),
            Harness(server.base_url, msgs, concurrency=c),
            MeteredHarness(server.base_url, msgs, db_url, c),
        ]
        for cl in clients:
            await cl.start()
        try:
            arms = {cl.name: _arm(cl, c, per_slot, server) for cl in clients}
            log(f"B4: {sizes.rounds} rounds x {per_slot * c} calls at concurrency {c}")
            res = await interleave(arms, sizes.rounds)
        finally:
            for cl in clients:
                await cl.close()
    s = Section(
        "B4",
        "metered tokens per second in one process, 2k-token calls, zero-latency server",
        f"{per_slot * c} calls per arm per round at concurrency {c}, {sizes.rounds} rounds, "
        "arms interleaved. Each call carries ~2,000 tokens (≈1,550 prompt: a 6,000-character "
        "user message; 450 completion). *Metered* = what the loop does around a call: reserve "
        "the budget (one write transaction), call, then write the ledger row, the roll-ups "
        "and settle the reservation (a second transaction), SQLite file, WAL. Tokens are "
        "those the server reported.",
    )
    raw = metric(res, "raw aiohttp", "tokens_per_s")
    for name in ("harness, metered", "harness"):
        tps = metric(res, name, "tokens_per_s")
        r = ratios(res, name, "raw aiohttp", "tokens_per_s")
        judged = name == "harness, metered"
        s.add(
            f"{name}: tokens/s",
            tps.fmt(0),
            ">= 1,000,000" if judged else "",
            verdict(tps.median >= 1e6) if judged else "",
            f"{r.median:.2f}x raw aiohttp ({raw.median:,.0f} tokens/s); "
            f"{metric(res, name, 'throughput').median:,.0f} calls/s",
        )
    busy = ", ".join(f"{name} {metric(res, name, 'server_busy').median:.0%}" for name in res)
    s.notes.append(f"Fake server's share of a core (median of rounds) during each arm: {busy}.")
    return s
