"""A workspace whose database holds real runs, for the dashboard's tests: a delegated run
(done), a failed run, a run paused for budget, a scheduled run and a run whose model wrote
HTML, all worked by a Worker against the fake OpenAI-compatible server (and, for the HTML,
the scripted provider)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from harness import clock, ledger, schedules
from harness.provider import OpenAIProvider
from harness.runtime import Runtime, build_runtime
from harness.settings import load_workspace
from harness.store import Store
from harness.testing import ScriptedProvider
from harness.testing.fakeserver import FakeConfig, FakeServer
from harness.usage import CallOutcome, CallRecord, Usage
from tests.helpers import set_front_matter, submit, work

CONFIG = """
database_url = "sqlite:///var/harness.db"
timezone = "UTC"
default_model = "fake"
chief = "arnold"
[providers.fake]
base_url = "{up}"
backoff_base_s = 0.001
[providers.broken]
base_url = "{down}"
max_retries = 0
[models.fake]
provider = "fake"
id = "fake-model"
max_tokens = 64
price_input = 1.0
price_output = 2.0
[models.down]
provider = "broken"
id = "fake-model"
max_tokens = 64
[worker]
retry_backoff_s = 0
max_attempts = 2
[[schedules]]
name = "nightly"
cron = "0 3 * * *"
agent = "veblen"
goal = "Summarise the night's reading."
"""

HTML = '<img src=x onerror="alert(1)"><script>alert(2)</script><b>bold?</b>'


@dataclass(frozen=True)
class Seeded:
    """Where the seeded workspace is, and which run is which."""

    ws: Path
    delegated: int
    failed: int
    paused: int
    scheduled: int
    html: int


def configure(ws: Path, up: str, down: str) -> None:
    (ws / "config/harness.toml").write_text(CONFIG.format(up=up, down=down))
    arnold = ws / "agents/arnold.md"
    set_front_matter(arnold, "delegates_to", "[veblen, bradlee, gulbenkian, simmons]")
    set_front_matter(arnold, "min_delegations", "3")  # the fake server calls one tool a step
    set_front_matter(arnold, "delegation_rounds", "3")
    set_front_matter(ws / "agents/gulbenkian.md", "model", "down")
    set_front_matter(ws / "agents/simmons.md", "daily_token_budget", "1000")
    set_front_matter(ws / "agents/veblen.md", "daily_token_budget", "1500")
    set_front_matter(ws / "agents/bradlee.md", "daily_token_budget", "1200")


def runtime(ws: Path, provider: object | None = None) -> Runtime:
    workspace = load_workspace(ws)
    store = Store.open(workspace.database_url())
    chosen = provider or OpenAIProvider(workspace.settings)
    return build_runtime(workspace, provider=chosen, store=store)  # type: ignore[arg-type]


SIMMONS_SPENT = 960  # of simmons' 1,000 today


async def _spend(rt: Runtime, agent: str, tokens: int) -> None:
    """An earlier call of ``agent`` today, in the ledger."""
    spent = CallRecord("fake", "fake", CallOutcome.OK, Usage(tokens - 10, 10))
    await rt.store.write(ledger.record, ledger.CallContext(agent), [spent], rt.settings)


def _days_ago(days: int) -> float:
    return time.time() - days * 86400


async def _history(rt: Runtime, days: int) -> None:
    """Runs on each of the ``days`` days before today (the clock moved back), for a ledger
    with a past."""
    agents = ("veblen", "bradlee", "arnold")
    try:
        for back in range(days, 0, -1):
            clock.use(partial(_days_ago, back))
            for i in range(1 + back % 3):
                await submit(rt, f"Notes for day -{back}, part {i + 1}.", agents[(back + i) % 3])
            await work(rt)
    finally:
        clock.use(None)


async def _seed(ws: Path, history: int) -> Seeded:
    async with FakeServer(FakeConfig()) as up, FakeServer(FakeConfig(p_500=1.0)) as down:
        configure(ws, up.base_url, down.base_url)
        rt = runtime(ws)
        await _history(rt, history)
        delegated = (await submit(rt, "Brief me on HBM supply for 2027."))[0]
        failed = (await submit(rt, "Model the inference economy.", "gulbenkian"))[0]
        await _spend(rt, "simmons", SIMMONS_SPENT)  # what is left cannot take one more call
        paused = (await submit(rt, "Rebalance the portfolio.", "simmons"))[0]
        now = clock.now()
        await rt.store.write(schedules.fire_due, rt.settings, now - 86400)  # first seen
        [scheduled] = await rt.store.write(schedules.fire_due, rt.settings, now)
        await work(rt)
        await rt.aclose()
    scripted = ScriptedProvider([f"Here is my answer: {HTML}"])
    rt = runtime(ws, scripted)
    html = (await submit(rt, f"Render this: {HTML}", "bradlee"))[0]
    await work(rt)
    await rt.aclose()
    return Seeded(ws, delegated, failed, paused, scheduled, html)


def seed(ws: Path, history: int = 0) -> Seeded:
    """Run the seeding runs in ``ws`` (a copy of the default workspace), after ``history``
    days of earlier runs."""
    return anyio.run(_seed, ws, history)
