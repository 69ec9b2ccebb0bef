"""The ledger against what servers really reported, through the real provider: retries,
fallbacks to another provider, and replies without usage (estimated, never zero)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from harness.provider import OpenAIProvider
from harness.provider.transport import default_transport
from harness.runtime import build_runtime
from harness.settings import ProviderConfig, load_workspace
from harness.store import Store, views
from harness.store.schema import calls
from harness.testing.fakeserver import FakeConfig, FakeServer
from tests.helpers import Tap, set_front_matter, submit, work

pytestmark = pytest.mark.anyio


CONFIG = """
default_model = "primary"
[providers.flaky]
base_url = "{flaky}"
max_retries = {retries}
backoff_base_s = 0.001
backoff_max_s = 0.002
[providers.steady]
base_url = "{steady}"
backoff_base_s = 0.001
[models.primary]
provider = "flaky"
id = "fake-model"
max_tokens = 64
price_input = 1.0
price_output = 2.0
fallbacks = ["backup"]
[models.backup]
provider = "steady"
id = "fake-model"
max_tokens = 64
price_input = 3.0
price_output = 4.0
[worker]
retry_backoff_s = 0
"""


async def _run(ws_dir: Path, n: int) -> tuple[list[dict], list[Tap], list[dict]]:  # type: ignore[type-arg]
    ws = load_workspace(ws_dir)
    taps: list[Tap] = []

    def factory(name: str, config: ProviderConfig) -> httpx.AsyncBaseTransport:
        taps.append(Tap(default_transport(config)))
        return taps[-1]

    rt = build_runtime(
        ws,
        provider=OpenAIProvider(ws.settings, transport_factory=factory),
        store=Store.open(ws.database_url()),
    )
    run_ids = [(await submit(rt, f"question {i}", "veblen"))[0] for i in range(n)]
    await work(rt, concurrency=3)
    runs = [await rt.store.read(views.get_run, r) for r in run_ids]
    rows = await rt.store.read(lambda c: [dict(r) for r in c.execute(select(calls)).mappings()])
    await rt.aclose()
    return rows, taps, runs  # type: ignore[return-value]


def _configure(ws_dir: Path, flaky: str, steady: str, retries: int) -> None:
    (ws_dir / "config/harness.toml").write_text(
        CONFIG.format(flaky=flaky, steady=steady, retries=retries)
    )
    for agent in ("arnold", "veblen", "simmons", "bradlee", "gulbenkian"):
        set_front_matter(ws_dir / f"agents/{agent}.md", "model", "primary")


async def test_retries_are_each_recorded_and_sums_match_the_server(workspace_dir: Path) -> None:
    flaky = FakeConfig(tool_calls="never", schedule=("500", "ok", "429", "ok", "no_usage"),
                       repeat_schedule=True, retry_after_s=0.01)  # fmt: skip
    async with FakeServer(flaky) as a, FakeServer(FakeConfig(tool_calls="never")) as b:
        _configure(workspace_dir, a.base_url, b.base_url, retries=3)
        rows, taps, runs = await _run(workspace_dir, 5)
        served = a.stats()
    assert all(r["status"] == "done" for r in runs)
    ok = [r for r in rows if r["outcome"] == "ok"]
    errors = [r for r in rows if r["outcome"] == "error"]
    assert (
        len(ok) == 5
        and len(errors)
        == served["by_outcome"]["500"]["served"] + served["by_outcome"]["429"]["served"]
    )
    assert len(rows) == served["served"]  # one ledger row per attempt that reached the server
    reported = [r for r in ok if not r["estimated"]]
    tapped = [u for t in taps for u in t.usages]
    assert sum(r["prompt_tokens"] for r in reported) == sum(u["prompt_tokens"] for u in tapped)
    assert sum(r["completion_tokens"] for r in reported) == sum(
        u["completion_tokens"] for u in tapped
    )
    estimated = [r for r in ok if r["estimated"]]
    assert len(estimated) == served["by_outcome"]["no_usage"]["served"] >= 1
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in estimated)
    assert all(r["prompt_tokens"] == 0 and r["http_status"] in (429, 500) for r in errors)
    # cost from the price table: 1 USD per million input, 2 per million output
    for r in ok:
        assert r["cost_usd"] == pytest.approx(
            (r["prompt_tokens"] + 2 * r["completion_tokens"]) / 1e6
        )
    total = sum(r["usage"]["total_tokens"] for r in runs)
    assert total == sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)


async def test_fallback_attempts_are_recorded_under_each_model(workspace_dir: Path) -> None:
    down = FakeConfig(tool_calls="never", p_500=1.0)
    async with FakeServer(down) as a, FakeServer(FakeConfig(tool_calls="never")) as b:
        _configure(workspace_dir, a.base_url, b.base_url, retries=1)
        rows, taps, runs = await _run(workspace_dir, 2)
        failed, answered = a.stats(), b.stats()
    assert all(r["status"] == "done" for r in runs)
    by_model = {m: [r for r in rows if r["model"] == m] for m in ("primary", "backup")}
    assert len(by_model["primary"]) == failed["served"] == 4  # 2 calls x (1 try + 1 retry)
    assert all(r["outcome"] == "error" and r["provider"] == "flaky" for r in by_model["primary"])
    assert len(by_model["backup"]) == answered["completions"] == 2
    steady = next(t for t in taps if t.usages)
    assert sum(r["prompt_tokens"] for r in by_model["backup"]) == sum(
        u["prompt_tokens"] for u in steady.usages
    )
    # the backup's prices apply to the calls it answered
    for r in by_model["backup"]:
        assert r["cost_usd"] == pytest.approx(
            (3 * r["prompt_tokens"] + 4 * r["completion_tokens"]) / 1e6
        )
