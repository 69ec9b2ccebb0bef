"""The benchmark suite (``python -m bench``) runs end to end with tiny sizes: no timings are
checked, only that every benchmark's code path still works and reports its rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from bench import (
    b1_call,
    b2_step,
    b3_concurrency,
    b5_queue,
    b6_ledger,
    b10_long,
    b11_scale,
    b12_first_call,
    b13_estimates,
    suite,
)
from bench.__main__ import main
from bench.clients import LiteLLM, litellm_available, messages
from bench.common import TINY, FakeServerProcess, Section, quiet_harness_logs


def _measures(section: Section) -> list[str]:
    return [r.measure for r in section.rows]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServerProcess]:
    quiet_harness_logs()
    with FakeServerProcess() as srv:
        yield srv


def test_call_and_step_benchmarks(server: FakeServerProcess) -> None:
    async def go() -> list[Section]:
        return [
            await b3_concurrency.server_ceiling(TINY, server),
            await b1_call.run(TINY, server, litellm=False),
            await b2_step.run(TINY, server),
            await b3_concurrency.run_b3(TINY, server),
            await b3_concurrency.run_b4(TINY, server),
            await b10_long.run(TINY, server),
            await b13_estimates.run(TINY, server),
        ]

    ceiling, b1, b2, b3, b4, b10, b13 = anyio.run(go)
    assert len(ceiling.rows) == 4
    assert "harness / raw aiohttp" in _measures(b1)
    assert any("openai SDK" in m for m in _measures(b1))
    assert _measures(b2)[:2] == ["harness / raw (mean step time)", "added p50 per step"]
    assert "C=4: throughput harness / raw" in _measures(b3)
    assert "harness, metered: tokens/s" in _measures(b4)
    assert _measures(b10)[0] == "CPU per step, last 1 / first 1"
    assert "harness's estimate after the first call: p99" in _measures(b13)
    for section in (b1, b2, b3, b4, b10, b13):
        assert all(r.value != "n/a" for r in section.rows), section.markdown()


@pytest.mark.postgres
def test_queue_and_ledger_benchmarks() -> None:
    b5, b6 = anyio.run(b5_queue.run, TINY), anyio.run(b6_ledger.run, TINY)
    measures = _measures(b5)
    assert "sqlite, one at a time: harness tasks/s" in measures
    assert "postgres, batches of 4: harness / raw" in measures  # PostgreSQL was measured
    assert _measures(b6)[:2] == ["today's use, one agent: p99", "30-day table, all agents: p99"]


@pytest.mark.slow
@pytest.mark.postgres
def test_scale_out_benchmark() -> None:
    b11 = anyio.run(b11_scale.run, TINY)
    measures = _measures(b11)
    for row in (
        "1 worker(s) x 64 slots: aggregate runs/s",
        "2 workers / 1 worker: aggregate runs/s",
        "2 worker(s): claim latency p99",
        "4 claimer(s): claims/s",
        "PostgreSQL CPU per claim (a claim transaction), all levels",
        "4 caller(s): ledger calls/s",
    ):
        assert any(m.startswith(row) for m in measures), b11.markdown()
    assert all(r.value != "n/a" for r in b11.rows), b11.markdown()


@pytest.mark.slow
def test_worker_process_benchmarks_and_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    args = [
        "--sizes", "tiny", "--only", "B7,B8,B9,B14", "--soak-minutes", "0.1", "--out", str(out)
    ]  # fmt: skip
    assert main(args) == 0
    text = out.read_text()
    assert "python -m bench --sizes tiny --only B7,B8,B9,B14 --soak-minutes 0.1" in text
    for row in (
        "start -> first task's model call",
        "worker RSS",
        "`harness --help` wall time",
        "`harness status` wall time",
        "`harness agents list` wall time",
        "WAL high-water mark",
        "one-call, 8 in flight, sqlite: wall / raw",
        "one-call, 8 in flight, postgres: worker CPU per run",
        "delegated, 8 in flight, sqlite: worker CPU per run",
    ):
        assert row in text
    assert "## Summary" in text and "B7" in text and "B8" in text and "B14" in text


def test_first_call_benchmark() -> None:
    """B12 runs real `harness run` processes: its rows, the ledger and the server's request
    log read (no timing is checked)."""
    b12 = anyio.run(b12_first_call.run, TINY)
    measures = _measures(b12)
    assert measures[0] == "start -> first model request (used workspace)"
    assert "first call's latency / later calls' (used workspace)" in measures
    assert "first call's latency / later calls' (raw aiohttp)" in measures
    assert all(r.value != "n/a" for r in b12.rows), b12.markdown()


def test_unknown_benchmark_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        main(["--only", "B99"])
    assert ",".join(suite.KEYS) == "B1,B2,B3,B4,B5,B6,B7,B8,B9,B10,B11,B12,B13,B14"


@pytest.mark.slow
@pytest.mark.skipif(not litellm_available(), reason="litellm is not installed")
def test_litellm_arm_makes_a_call(server: FakeServerProcess) -> None:
    async def go() -> int:
        client = LiteLLM(server.base_url, messages(50))
        await client.start()
        try:
            return await client.call()
        finally:
            await client.close()

    assert anyio.run(go) > 0
