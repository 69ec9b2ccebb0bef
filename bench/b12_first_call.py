"""B12: one `harness run` from a cold process: time until its first model request reaches the
server, and its first call's latency against the run's later calls."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .b7_restart import harness_bin
from .common import (
    FakeServerProcess,
    Section,
    Sizes,
    Spread,
    log,
    make_workspace,
    metric,
    ratios,
    rotated,
    subprocess_env,
    verdict,
)

LATENCY_S = 0.2  # the fake server's time to answer each call
GOAL = "Brief me on HBM supply for 2027"
MODEL = "gpt-4.1-mini"  # the hosted quick start's model (priced by the catalogue)
WARM, FRESH, RAW = "harness run, used workspace", "harness run, new workspace", "raw aiohttp"
CALL_TARGET = 1.10  # first call's latency / the later calls'
START_TARGET_S = 1.0  # process start -> first model request

# The floor: a Python process that imports aiohttp and makes the same kind of calls.
RAW_SCRIPT = """
import asyncio, json, sys, time
import aiohttp

async def main(url):
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}
    lat = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            t = time.perf_counter()
            async with session.post(url + "/chat/completions", json=body) as r:
                await r.read()
            lat.append((time.perf_counter() - t) * 1000)
    print(json.dumps(lat))

asyncio.run(main(sys.argv[1]))
"""


def _env(env: dict[str, str], root: Path) -> dict[str, str]:
    """A subprocess's environment, bytecode written (as after an install: this sandbox sets
    PYTHONDONTWRITEBYTECODE, which would compile harness from source at every start)."""
    out = subprocess_env(env, root)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


class Arms:
    """The three arms of a round, each one process against the same server."""

    def __init__(self, server: FakeServerProcess, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.fresh_no = 0
        self.warm = self._workspace("used")

    def _workspace(self, name: str) -> tuple[Path, dict[str, str]]:
        root = self.tmp / name
        url = self.server.base_url
        _, env = make_workspace(
            root, url, HARNESS_BASE_URL=url, HARNESS_MODEL=MODEL, HARNESS_API_KEY="sk-bench-12345"
        )
        return root, _env(env, root)

    def harness_warm(self) -> dict[str, float]:
        return self._harness(*self.warm)

    def harness_fresh(self) -> dict[str, float]:
        self.fresh_no += 1
        return self._harness(*self._workspace(f"new{self.fresh_no}"))

    def _harness(self, root: Path, env: dict[str, str]) -> dict[str, float]:
        self.server.reset()
        t0 = time.time()
        proc = subprocess.run(
            [harness_bin(), "run", "--json", GOAL], env=env, capture_output=True, text=True
        )
        end = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"harness run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        run_id = int(json.loads(proc.stdout)["run_id"])
        latencies = _ledger_latencies(root / "var" / "harness.db", run_id)
        reqs = self.server.requests()
        probe = [r for r in reqs if r["path"].endswith("/models")]
        chats = [r for r in reqs if r["path"].endswith("/chat/completions")]
        served = [r["served"] for r in chats if r["served"] is not None]
        return {
            "to_probe_s": probe[0]["arrived"] - t0 if probe else float("nan"),
            "to_first_s": chats[0]["arrived"] - t0,
            "probe_to_first_ms": (chats[0]["arrived"] - probe[0]["served"]) * 1000
            if probe and probe[0]["served"]
            else float("nan"),
            **_first_next(latencies),
            "wall_s": end - t0,
            "exit_ms": (end - max(served)) * 1000,
            "connections": len({r["port"] for r in reqs}),
        }

    def raw(self) -> dict[str, float]:
        self.server.reset()
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", RAW_SCRIPT, self.server.base_url],
            capture_output=True,
            text=True,
            check=True,
        )
        end = time.time()
        reqs = self.server.requests()
        return {
            "to_first_s": reqs[0]["arrived"] - t0,
            **_first_next(json.loads(proc.stdout)),
            "wall_s": end - t0,
        }


def _ledger_latencies(db: Path, run_id: int) -> list[float]:
    """The run's successful calls' latencies (ms), in the order they were recorded."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT c.latency_ms FROM calls c JOIN tasks t ON t.id = c.task_id "
            "WHERE t.run_id = ? AND c.outcome = 'ok' ORDER BY c.id",
            (run_id,),
        ).fetchall()
    finally:
        con.close()
    return [float(r[0]) for r in rows]


def _first_next(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        raise RuntimeError(f"a run needs two calls or more to compare: {latencies}")
    first, later = latencies[0], statistics.median(latencies[1:])
    return {"first_ms": first, "next_ms": later, "first_over_next": first / later}


def _interleave(
    arms: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Every arm once per round, order rotated. The warm-up (unrecorded): the used
    workspace's first run (it writes harness's bytecode and the workspace's database) and
    one raw run."""
    arms[WARM]()
    arms[RAW]()
    out: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for r in range(rounds):
        for name in rotated(list(arms), r):
            out[name].append(arms[name]())
    return out


async def run(sizes: Sizes) -> Section:
    with FakeServerProcess(ttft_s=LATENCY_S) as server, tempfile.TemporaryDirectory() as tmp:
        a = Arms(server, Path(tmp))
        arms = {WARM: a.harness_warm, FRESH: a.harness_fresh, RAW: a.raw}
        log(f"B12: {len(arms)} arms x {sizes.b12_rounds} rounds")
        res = _interleave(arms, sizes.b12_rounds)
    return _section(sizes, res)


def _section(sizes: Sizes, res: dict[str, list[dict[str, float]]]) -> Section:
    s = Section(
        "B12",
        "a single run's first model call",
        f"`harness run --json GOAL` as a subprocess, {sizes.b12_rounds} round(s), three arms "
        "interleaved (order rotated) against one fake server answering every call in "
        f"{LATENCY_S * 1000:.0f} ms: the hosted quick start (`HARNESS_BASE_URL`, "
        f"`HARNESS_MODEL={MODEL}`, `HARNESS_API_KEY`) in a workspace that has run before, the "
        "same in a new workspace each time (no database yet), and the floor, a Python process "
        "that imports aiohttp and makes three calls. Unrecorded warm-up: one run of the used "
        "workspace (its database, harness's bytecode) and one raw run. *Start -> first request*: "
        "from just before `Popen` until the server's request log shows the first chat request "
        "arriving (both `time.time()`). *First / next*: the run's first call's latency over "
        "the median of its later calls, from the ledger (`calls.latency_ms`; the raw arm: "
        "its own timings).",
    )
    to_first = metric(res, WARM, "to_first_s")
    s.add(
        "start -> first model request (used workspace)",
        to_first.fmt(2, " s"),
        f"<= {START_TARGET_S:g} s",
        verdict(to_first.median <= START_TARGET_S),
        f"its probe (`GET /models`) at {metric(res, WARM, 'to_probe_s').median:.2f} s; probe "
        f"answered -> first chat request {metric(res, WARM, 'probe_to_first_ms').median:.0f} ms",
    )
    over = ratios(res, WARM, RAW, "to_first_s")
    s.add(
        "start -> first model request, harness / raw aiohttp process",
        over.fmt() + "x",
        context=f"raw aiohttp: {metric(res, RAW, 'to_first_s').median:.2f} s",
    )
    fresh = metric(res, FRESH, "to_first_s")
    s.add(
        "start -> first model request (new workspace)",
        fresh.fmt(2, " s"),
        context=f"{(fresh.median - to_first.median) * 1000:+.0f} ms against a used workspace "
        "(the database created, nothing cached)",
    )
    for arm, label in ((WARM, "used workspace"), (FRESH, "new workspace")):
        ratio = metric(res, arm, "first_over_next")
        s.add(
            f"first call's latency / later calls' ({label})",
            ratio.fmt() + "x",
            f"<= {CALL_TARGET:.2f}x",
            verdict(ratio.median <= CALL_TARGET),
            f"{metric(res, arm, 'first_ms').median:.0f} ms vs "
            f"{metric(res, arm, 'next_ms').median:.0f} ms",
        )
    floor = metric(res, RAW, "first_over_next")
    s.add(
        "first call's latency / later calls' (raw aiohttp)",
        floor.fmt() + "x",
        context=f"{metric(res, RAW, 'first_ms').median:.0f} ms vs "
        f"{metric(res, RAW, 'next_ms').median:.0f} ms: a new connection's cost",
    )
    wall = metric(res, WARM, "wall_s")
    s.add(
        "whole run, wall (used workspace)",
        wall.fmt(2, " s"),
        context=f"exit {metric(res, WARM, 'exit_ms').median:.0f} ms after the last answer; "
        f"{_connections(res)} connection(s) per run",
    )
    s.notes.append(
        "The server answers in a fixed time, so the first call's extra latency is the "
        "client's own set-up on that call's path (the HTTP client, its TLS context, the "
        "connection); 1.0x is the floor (the raw arm's first call opens a local connection, "
        "~1 ms; harness's first call reuses the preflight probe's). Start -> first request "
        "is mostly imports (~0.7 s: SQLAlchemy, aiohttp, pydantic and the settings models, "
        "httpx, structlog and Rich); a new workspace also creates its database (alembic and "
        "the migrations) and loads the model catalogue once. See bench/NOTES.md (B12)."
    )
    return s


def _connections(res: dict[str, list[dict[str, Any]]]) -> str:
    return f"{Spread.of([r['connections'] for r in res[WARM]]).median:.0f}"
