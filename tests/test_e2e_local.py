"""End to end on the real embedded model (llama.cpp server + SmolLM2-135M, no mocks).

- one agent answers through the whole runtime, and the ledger holds exactly the usage the
  server reported (read off the wire by a tap on the real transport);
- ``harness run`` (the CLI, a subprocess) hands a goal to arnold, who delegates to at least
  two specialists through the queue; they answer and arnold writes the final answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from tests.conftest import REPO
from tests.helpers import Tap, submit, work

pytestmark = [pytest.mark.llm, pytest.mark.anyio]


async def test_one_agent_answers_and_the_ledger_matches_the_server(
    workspace_dir: Path, llama_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_PROVIDERS__LOCAL__BASE_URL", llama_server)
    ws = load_workspace(workspace_dir)
    taps: list[Tap] = []

    def factory(name: str, config: ProviderConfig) -> httpx.AsyncBaseTransport:
        taps.append(Tap(default_transport(config)))
        return taps[-1]

    provider = OpenAIProvider(ws.settings, transport_factory=factory)
    store = Store.open(ws.database_url())
    rt = build_runtime(ws, provider=provider, store=store)
    run_id, _ = await submit(rt, "In two sentences: why is LLM decoding memory-bound?", "veblen")
    await work(rt, concurrency=1)
    run = await rt.store.read(views.get_run, run_id)
    rows = await rt.store.read(
        lambda c: c.execute(select(calls).order_by(calls.c.id)).mappings().all()
    )
    await rt.aclose()
    assert run is not None and run["status"] == "done", run
    assert run["answer"].strip()
    [tap] = taps
    assert len(rows) == len(tap.usages) >= 1
    for row, usage in zip(rows, tap.usages, strict=True):
        assert row["outcome"] == "ok" and not row["estimated"]
        assert row["prompt_tokens"] == usage["prompt_tokens"] > 0
        assert row["completion_tokens"] == usage["completion_tokens"] > 0
    assert run["usage"]["total_tokens"] == sum(u["total_tokens"] for u in tap.usages)


@pytest.mark.slow
def test_harness_run_delegates_on_the_local_model(workspace_dir: Path, llama_server: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")},
        "HARNESS_PROVIDERS__LOCAL__BASE_URL": llama_server,
        "HARNESS_LOCAL__AUTOSTART": "false",
    }
    goal = "Write a short briefing on the economics of AI inference."
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "--workspace", str(workspace_dir), "run", "--json", goal],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["status"] == "done" and out["answer"].strip()
    assert out["usage"]["calls"] >= 4 and out["usage"]["estimated_calls"] == 0
    store = Store.open(load_workspace(workspace_dir).database_url())
    run = store.read_sync(views.get_run, out["run_id"])
    store.close()
    assert run is not None
    [root] = run["tasks"]
    children = root["children"]
    assert root["agent"] == "arnold"
    assert len({c["agent"] for c in children}) >= 2  # delegated to at least two specialists
    assert all(c["status"] == "done" and c["result"] for c in children)
