"""B1: one chat call through the provider, sequential, against a zero-latency server."""

from __future__ import annotations

from typing import Any

from .clients import (
    Client,
    Harness,
    LiteLLM,
    OpenAISDK,
    RawAiohttp,
    RawHttpx,
    litellm_available,
    messages,
)
from .common import (
    CpuMeter,
    FakeServerProcess,
    Section,
    Sizes,
    interleave_sliced,
    log,
    metric,
    ratios,
    verdict,
)

BASE = "raw aiohttp"
SLICES = 10  # each round alternates the arms this many times


def _arm(client: Client, server: FakeServerProcess) -> Any:
    async def run(n: int) -> dict[str, float]:
        with CpuMeter(server) as m:
            for _ in range(n):
                await client.call()
        return {"n": n, "wall": m.wall, "server_cpu": m.server_cpu, "client_cpu": m.cpu}

    return run


def _per_call(res: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, float]]]:
    return {
        name: [
            {
                "us_per_call": r["wall"] / r["n"] * 1e6,
                "server_us_per_call": r["server_cpu"] / r["n"] * 1e6,
                "client_cpu_us_per_call": r["client_cpu"] / r["n"] * 1e6,
            }
            for r in rounds
        ]
        for name, rounds in res.items()
    }


async def run(sizes: Sizes, server: FakeServerProcess, *, litellm: bool = True) -> Section:
    server.reset(ttft_s=0.0, token_delay_s=0.0, completion_tokens=16)
    url, msgs = server.base_url, messages(200)
    clients: list[Client] = [
        RawAiohttp(url, msgs, concurrency=8),
        RawHttpx(url, msgs, concurrency=8),
        Harness(url, msgs, concurrency=8),
        Harness(url, msgs, concurrency=8, transport="httpx"),
        OpenAISDK(url, msgs),
    ]
    if litellm and litellm_available():
        clients.append(LiteLLM(url, msgs))
    for c in clients:
        await c.start()
    try:
        arms = {c.name: _arm(c, server) for c in clients}
        log(f"B1: {len(arms)} arms x {sizes.rounds} rounds x {sizes.b1_calls} calls")
        res = _per_call(await interleave_sliced(arms, sizes.rounds, sizes.b1_calls, SLICES))
    finally:
        for c in clients:
            await c.close()
    why = (
        ""
        if "LiteLLM acompletion" in res
        else ("skipped (quick sizes or --no-litellm)" if not litellm else "not installed")
    )
    return _section(sizes, res, why)


def _section(sizes: Sizes, res: dict[str, list[dict[str, float]]], litellm_why: str) -> Section:
    s = Section(
        "B1",
        "one chat call, sequential, zero-latency server",
        f"{sizes.b1_calls} sequential non-streamed calls per arm per round, {sizes.rounds} "
        f"rounds; within a round the arms take turns {SLICES} times "
        f"({max(sizes.b1_calls // SLICES, 1)} calls each turn, order rotated), after one "
        "unrecorded warm-up turn. Each arm sends the same body (system + 200-character user "
        "message, `max_tokens`) and reads the reply's message and usage; the fake server answers "
        "16 tokens at once. Figure: per-round ratio of mean time per call, arm / raw aiohttp.",
    )
    us = {name: metric(res, name, "us_per_call") for name in res}
    harness = "harness"
    r_aio = ratios(res, harness, BASE, "us_per_call")
    s.add(
        "harness / raw aiohttp",
        r_aio.fmt() + "x",
        "<= 1.5x",
        verdict(r_aio.median <= 1.5),
        f"{us[harness].median:.0f} µs vs {us[BASE].median:.0f} µs per call",
    )
    for other, label in (
        ("raw httpx", "raw httpx"),
        ("openai SDK", "the openai SDK"),
        ("LiteLLM acompletion", "LiteLLM acompletion"),
    ):
        if other not in res:
            s.add(f"harness / {label}", "not measured", "< 1x", "", litellm_why)
            continue
        r = ratios(res, harness, other, "us_per_call")
        s.add(
            f"harness / {label}",
            r.fmt() + "x",
            "< 1x (faster)",
            verdict(r.median < 1.0),
            f"{us[other].median:.0f} µs per call",
        )
    for name in res:
        if name in (BASE, harness):
            continue
        r = ratios(res, name, BASE, "us_per_call")
        s.add(f"{name} / raw aiohttp", r.fmt() + "x", context=f"{us[name].median:.0f} µs per call")
    server_us = metric(res, BASE, "server_us_per_call")
    client_us = metric(res, BASE, "client_cpu_us_per_call")
    s.notes.append(
        f"Fake server CPU per call: {server_us.median:.0f} µs (of the raw aiohttp arm's "
        f"{us[BASE].median:.0f} µs round trip; client CPU {client_us.median:.0f} µs). The server "
        "is in every arm's round trip in equal measure, so ratios understate the client-side "
        "differences; see the server ceiling check for its throughput limit."
    )
    if litellm_why:
        s.notes.append(f"LiteLLM arm not measured: {litellm_why}.")
    return s
