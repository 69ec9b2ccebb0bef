"""The real local model (llama.cpp + SmolLM2-135M, tools as a JSON-schema response format)
calls a real MCP server's tool end to end: the schema it decodes against comes from the
server's listing (made grammar-safe), the call runs on the server, and the server's output is
the tool result the next step is built from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.provider import OpenAIProvider
from harness.runtime import build_runtime
from harness.settings import load_workspace
from harness.store import Store, views
from tests.helpers import set_front_matter, submit, work
from tests.mcp_support import TIME_SERVER, add_server

pytestmark = [pytest.mark.llm, pytest.mark.anyio]

PROMPT = """You are a clock. You cannot know the time yourself: you must ask the tool first.
To ask it, reply exactly like this example, with the timezone the user names:
{"tool": "time__get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}
When you have the tool's result, answer with the time it gave."""


async def test_the_local_model_calls_an_mcp_tool_in_json_mode(
    workspace_dir: Path, llama_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_PROVIDERS__LOCAL__BASE_URL", llama_server)
    add_server(workspace_dir, "time", command=str(TIME_SERVER), args=["--local-timezone", "UTC"])
    agent = workspace_dir / "agents/veblen.md"
    for key, value in [("tools", "[time__get_current_time]"), ("max_steps", "2")]:
        set_front_matter(agent, key, value)
    set_front_matter(agent, "temperature", "0")
    head, _ = agent.read_text().split("\n---\n", 1)
    agent.write_text(f"{head}\n---\n{PROMPT}\n")
    ws = load_workspace(workspace_dir)
    assert ws.settings.models["local"].tools == "json"
    rt = build_runtime(
        ws, provider=OpenAIProvider(ws.settings), store=Store.open(ws.database_url())
    )
    try:
        run_id, task_id = await submit(rt, "What time is it in Europe/Paris?", "veblen")
        await work(rt, concurrency=1)
        run = await rt.store.read(views.get_run, run_id)
        transcript = await rt.store.read(views.transcript, task_id)
    finally:
        await rt.aclose()
    assert run is not None and run["status"] == "done", run
    calls = [c for m in transcript for c in m.get("tool_calls", [])]
    assert calls and calls[0]["name"] == "time__get_current_time"
    arguments = json.loads(calls[0]["arguments"])
    assert set(arguments) == {"timezone"}  # decoded against the server's own schema
    [result] = [m for m in transcript if m["role"] == "tool"]
    now = json.loads(result["content"])  # the server's real answer, read by the next step
    assert now["timezone"] == arguments["timezone"] and now["day_of_week"]
    assert run["answer"].strip() and run["usage"]["calls"] == 2
