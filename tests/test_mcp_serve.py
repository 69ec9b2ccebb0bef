"""``harness mcp serve``, driven by the MCP SDK's own ``Client``.

In process (the SDK connects to the server object directly) for the tools' contracts; as a
real subprocess over stdio and over streamable HTTP (with a bearer token) for the commands.
Runs are worked by a real ``Worker`` on a scripted provider (or, with ``--worker``, by the
server's own worker against the fake OpenAI server), as ``harness submit`` leaves them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as mt
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from harness.cli import app
from harness.mcp import build_server
from harness.settings import load_workspace
from harness.store import Store
from harness.testing import ScriptedProvider
from harness.worker import Worker
from tests.helpers import runtime
from tests.llm_fixtures import free_port
from tests.processes import HARNESS, Procs, worker_env

pytestmark = pytest.mark.anyio

TOOLS = ["cancel_run", "ledger", "list_runs", "run_status", "show_run", "submit_run"]


def structured(result: mt.CallToolResult) -> Any:
    """A tool's structured content, checked against its JSON text copy."""
    assert not result.is_error, result
    [text] = result.content
    assert isinstance(text, mt.TextContent)
    assert json.loads(text.text) == result.structured_content
    return result.structured_content


def error_text(result: mt.CallToolResult) -> str:
    assert result.is_error
    return "".join(b.text for b in result.content if isinstance(b, mt.TextContent))


@asynccontextmanager
async def working(ws: Path, answer: str = "The answer.") -> AsyncIterator[Worker]:
    """A real worker on ``ws`` (a scripted model answering ``answer``) for the block."""
    rt, _ = runtime(ws, lambda request: ScriptedProvider.text(answer))
    worker = Worker(rt, 2, handle_signals=False)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            yield worker
            worker.stop()
    finally:
        await rt.aclose()


async def wait_done(client: Client, run_id: int) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            status = structured(await client.call_tool("run_status", {"run_id": run_id}))
            if status["status"] in ("done", "failed", "cancelled"):
                return dict(status)
            await anyio.sleep(0.05)


async def test_submit_status_until_done_show_list_and_ledger(workspace_dir: Path) -> None:
    ws = load_workspace(workspace_dir)
    store = Store.open(ws.database_url())
    try:
        async with Client(build_server(ws, store)) as client:
            listed = await client.list_tools()
            assert sorted(t.name for t in listed.tools) == TOOLS
            submitted = structured(
                await client.call_tool("submit_run", {"goal": "Explain HBM.", "agent": "veblen"})
            )
            run_id = submitted["run_id"]
            assert submitted["status"] == "queued" and "no worker" in submitted["note"]
            async with working(workspace_dir):
                status = await wait_done(client, run_id)
            assert status["status"] == "done" and status["answer"] == "The answer."
            assert status["error"] is None and status["usage"]["calls"] == 1
            shown = structured(await client.call_tool("show_run", {"run_id": run_id}))
            [task] = shown["tasks"]
            assert task["agent"] == "veblen" and task["usage"]["total_tokens"] > 0
            runs = structured(await client.call_tool("list_runs", {"status": "done"}))["runs"]
            assert [r["id"] for r in runs] == [run_id]
            assert structured(await client.call_tool("list_runs", {"status": "failed"})) == {
                "runs": []
            }
            rows = structured(await client.call_tool("ledger", {"day": "today"}))["rows"]
    finally:
        store.close()
    res = CliRunner().invoke(app, ["-w", str(workspace_dir), "ledger", "--json", "--day", "today"])
    assert res.exit_code == 0 and rows == json.loads(res.stdout)  # the CLI's very rows
    assert [r["agent"] for r in rows] == ["veblen"] and rows[0]["calls"] == 1


async def test_bad_arguments_and_unknown_runs_are_tool_errors(workspace_dir: Path) -> None:
    ws = load_workspace(workspace_dir)
    store = Store.open(ws.database_url())
    try:
        async with Client(build_server(ws, store)) as client:
            ghost = await client.call_tool("submit_run", {"goal": "x", "agent": "ghost"})
            assert "unknown agent 'ghost' (known: arnold, bradlee," in error_text(ghost)
            assert error_text(await client.call_tool("run_status", {"run_id": 42})).endswith(
                ": no run 42"
            )
            assert "no run 42" in error_text(await client.call_tool("cancel_run", {"run_id": 42}))
            day = await client.call_tool("ledger", {"day": "yesterday"})
            assert "not a date" in error_text(day)
            bad = await client.call_tool("list_runs", {"status": "sleeping"})
            assert bad.is_error
            run_id = structured(await client.call_tool("submit_run", {"goal": "g"}))["run_id"]
            cancelled = structured(await client.call_tool("cancel_run", {"run_id": run_id}))
            assert cancelled == {"run_id": run_id, "cancelled_tasks": 1}
            status = structured(await client.call_tool("run_status", {"run_id": run_id}))
            assert status["status"] == "cancelled" and status["note"] is None
            shown = structured(await client.call_tool("show_run", {"run_id": run_id}))
            assert shown["agent"] == "arnold"  # the chief by default
    finally:
        store.close()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}


async def test_serve_over_stdio_as_a_subprocess(workspace_dir: Path) -> None:
    params = StdioServerParameters(
        command=str(HARNESS), args=["-w", str(workspace_dir), "mcp", "serve"], env=_env()
    )
    async with Client(params) as client:
        run_id = structured(await client.call_tool("submit_run", {"goal": "g", "agent": "veblen"}))[
            "run_id"
        ]
        async with working(workspace_dir, "from the worker"):
            status = await wait_done(client, run_id)
        assert status["answer"] == "from the worker"
        rows = structured(await client.call_tool("ledger", {"agent": "veblen"}))["rows"]
        assert rows[0]["calls"] == 1


def _serving(ws: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    cmd = [str(HARNESS), "-w", str(ws), "--log-json", "mcp", "serve", *args]
    return subprocess.Popen(cmd, env=_env() | env, stderr=subprocess.PIPE, text=True)


def _url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "mcp_serving":
            return str(event["url"])
        seen.append(line)
    raise AssertionError(f"the server exited ({proc.wait()}) before serving: {''.join(seen)}")


@asynccontextmanager
async def http_client(url: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def test_serve_over_http_needs_the_token(workspace_dir: Path) -> None:
    with (workspace_dir / "config/harness.toml").open("a") as f:
        f.write('\n[mcp.serve]\ntoken_env = "TEST_MCP_TOKEN"\n')
    token = "t-" + os.urandom(8).hex()
    proc = _serving(workspace_dir, "--port", str(free_port()), TEST_MCP_TOKEN=token)
    try:
        url = _url(proc)
        assert url.startswith("http://127.0.0.1:")
        async with http_client(url, token) as client:
            listed = await client.list_tools()
            assert sorted(t.name for t in listed.tools) == TOOLS
            runs = structured(await client.call_tool("list_runs", {}))
            assert runs == {"runs": []}
        for wrong in (None, "t-wrong"):
            headers = {"Authorization": f"Bearer {wrong}"} if wrong else {}
            refused = httpx2.post(url, json={}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            with pytest.raises(BaseExceptionGroup):
                async with http_client(url, wrong) as client:
                    pass
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
        assert proc.stderr is not None
        rest = proc.stderr.read()
        proc.stderr.close()
        assert code == 0, rest  # SIGTERM: a clean stop


def test_serving_beyond_loopback_without_a_token_is_refused(workspace_dir: Path) -> None:
    args = ["-w", str(workspace_dir), "mcp", "serve", "--port", "0", "--host", "0.0.0.0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2  # ``harness`` exits 2 with the problem
    assert "mcp.serve.token_env: serving on 0.0.0.0 needs a token: name its variable here" in (
        res.stderr
    )


async def test_serve_with_its_own_worker_does_the_work(workspace_dir: Path, procs: Procs) -> None:
    fake = procs.fake()
    env = worker_env(fake.url)
    params = StdioServerParameters(
        command=str(HARNESS),
        args=["-w", str(workspace_dir), "mcp", "serve", "--worker", "2"],
        env=env,
    )
    async with Client(params) as client:
        run_id = structured(await client.call_tool("submit_run", {"goal": "g", "agent": "veblen"}))[
            "run_id"
        ]
        status = await wait_done(client, run_id)
    assert status["status"] == "done" and status["answer"]
    assert fake.stats()["completions"] >= 1
