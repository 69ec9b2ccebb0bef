"""MCP servers as tools, through the whole runtime, against real servers (no mocks of MCP).

- ``mcp-server-time`` from PyPI over stdio: a scripted model calls it, and the server's real
  answer is in the next request's tool message;
- the fixture server (tests/mcp_fixture.py, the SDK's server API) over stdio and streamable
  HTTP: errors, a hang past the timeout, a crash mid-call and an idle death (restarts), a huge
  result (capped), images, include/exclude, names sanitised and shortened, secrets;
- lazy start and shutdown: nothing starts before a task needs it, nothing outlives the runtime.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from harness.errors import ToolsUnavailable
from harness.messages import ChatRequest
from harness.runtime import Runtime
from harness.store import views
from harness.store.schema import messages
from harness.testing import ScriptedProvider, StepLike
from harness.tools import ToolContext
from harness.tools.mcp_adapt import tool_name
from tests.helpers import runtime, set_front_matter, submit, work
from tests.llm_fixtures import free_port
from tests.mcp_fixture import LONG_NAME
from tests.mcp_support import (
    FIXTURE,
    TIME_SERVER,
    add_fixture,
    add_server,
    http_fixture,
    offered,
    tool_messages,
)

pytestmark = pytest.mark.anyio


def descendants(pid: int | None = None) -> list[int]:
    """Living stdio MCP server processes (the fixture's, mcp-server-time) descending from
    ``pid`` (default: this process), from /proc: the ones harness starts."""
    parents: dict[int, int] = {}
    servers: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie is dead (and reaped by its parent soon)
            parents[int(entry.name)] = int(fields[1])
            if re.search(rb"mcp_fixture\.py\0(stdio|mute)|mcp-server-time", cmdline):
                servers.add(int(entry.name))
    found, frontier = [], [pid or os.getpid()]
    while frontier:
        me = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == me]
        found += kids
        frontier += kids
    return sorted(p for p in found if p in servers)


def uses(ws: Path, tools: str, agent: str = "veblen") -> None:
    set_front_matter(ws / f"agents/{agent}.md", "tools", tools)


def answer_with_results(request: ChatRequest) -> StepLike:
    return ScriptedProvider.text(json.dumps(tool_messages(request)))


async def finish(rt: Runtime, goal: str = "use the tools") -> dict[str, Any]:
    run_id, _ = await submit(rt, goal, "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None
    return run


async def test_a_real_server_from_pypi_answers_and_the_model_reads_its_output(
    workspace_dir: Path,
) -> None:
    add_server(workspace_dir, "time", command=str(TIME_SERVER), args=["--local-timezone", "UTC"])
    uses(workspace_dir, "[time__get_current_time, note_append]")
    script = [
        ScriptedProvider.tool_call("time__get_current_time", {"timezone": "Europe/London"}),
        answer_with_results,
    ]
    rt, provider = runtime(workspace_dir, script)
    assert descendants() == []  # building the runtime started nothing
    try:
        run = await finish(rt, "What time is it in London?")
        assert descendants() != []  # the server runs on for the process's next tasks
    finally:
        await rt.aclose()
    assert descendants() == []
    assert run["status"] == "done", run
    first, second = provider.requests
    assert offered(first) == ["note_append", "time__get_current_time"]
    spec = next(t for t in first.tools or [] if t.function.name == "time__get_current_time")
    assert spec.function.parameters["required"] == ["timezone"]
    assert "title" not in spec.function.parameters  # grammar-safe: pydantic noise dropped
    now = json.loads(tool_messages(second)["time__get_current_time"])  # the server's real output
    assert now["timezone"] == "Europe/London"
    when = datetime.fromisoformat(now["datetime"])
    assert abs(when.timestamp() - time.time()) < 300 and when.utcoffset() is not None
    assert now["day_of_week"] == when.strftime("%A")


@pytest.fixture(scope="module")
def fixture_url() -> Iterator[str]:
    """The fixture server over streamable HTTP, shared by this module's tests."""
    with http_fixture() as url:
        yield url


@pytest.fixture(params=["stdio", "http"])
def fixture_server(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Configures the fixture server as ``fx`` in a workspace: over stdio, or over
    streamable HTTP (a server already running on 127.0.0.1)."""
    if request.param == "stdio":
        return add_fixture
    url = request.getfixturevalue("fixture_url")
    return lambda ws, **keys: add_server(ws, "fx", url=url, **keys)


async def test_errors_hangs_huge_results_and_odd_names_are_results_the_task_goes_on(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch, fixture_server: Callable[..., None]
) -> None:
    monkeypatch.setenv("HARNESS_LIMITS__TOOL_OUTPUT_CHARS", "1000")
    fixture_server(workspace_dir, timeout_s=1)
    uses(workspace_dir, "[fx__*]")
    calls = ScriptedProvider.tool_calls(
        ("fx__fail", {"message": "boom"}),
        ("fx__hang", {"seconds": 30}),
        ("fx__huge", {"chars": 50_000}),
        ("fx__picture", {}),
        ("fx__stats", {}),
        ("fx__add", {"a": 2, "b": 3}),
        ("fx__dotted_name_tool", {}),
        (tool_name("fx", LONG_NAME), {}),
        ("fx__nope", {}),
    )
    rt, provider = runtime(workspace_dir, [calls, answer_with_results])
    try:
        started = time.monotonic()
        run = await finish(rt)
        assert time.monotonic() - started < 15  # the hang cost its timeout, not 30 s
    finally:
        await rt.aclose()
    assert run["status"] == "done", run
    first, second = provider.requests
    long_name = tool_name("fx", LONG_NAME)  # the same name on every listing
    assert long_name in offered(first) and all(len(n) <= 64 for n in offered(first))
    assert "fx__dotted_name_tool" in offered(first)
    got = tool_messages(second)
    assert got["fx__fail"] == "tool 'fx__fail' failed: it went wrong: boom"
    assert (
        got["fx__hang"] == "tool 'fx__hang' failed: no answer within 1s (mcp.servers.fx.timeout_s)"
    )
    assert len(got["fx__huge"]) <= 1000 and got["fx__huge"].endswith("reads on]")
    assert "read_artifact(artifact_id=" in got["fx__huge"]
    assert got["fx__picture"].splitlines() == [
        "a picture:",
        "[image: image/png, 2048 bytes]",
        "[resource file:///notes.txt: text/plain, 100 characters]",
    ]
    assert got["fx__stats"] == '{"runs": 3, "ok": true}'  # structured content only: as JSON
    assert got["fx__add"] == '{"sum": 5}'  # text and its structured copy: once
    assert got["fx__dotted_name_tool"] == "called dotted.name/tool"  # the server's own name
    assert got[long_name] == f"called {LONG_NAME}"
    assert got["fx__nope"].startswith("unknown tool 'fx__nope'")


async def test_a_crash_mid_call_is_a_tool_error_and_the_next_call_restarts_it(
    workspace_dir: Path,
) -> None:
    add_fixture(workspace_dir)
    uses(workspace_dir, "[fx__pid, fx__crash]")
    script: list[StepLike] = [
        ScriptedProvider.tool_call("fx__pid"),
        ScriptedProvider.tool_call("fx__crash"),
        ScriptedProvider.tool_call("fx__pid", {"again": 1}),
        answer_with_results,
    ]
    rt, provider = runtime(workspace_dir, script)
    try:
        run = await finish(rt)
    finally:
        await rt.aclose()
    assert run["status"] == "done", run
    before = tool_messages(provider.requests[1])["fx__pid"]
    crash = tool_messages(provider.requests[2])["fx__crash"]
    after = tool_messages(provider.requests[3])["fx__pid"]
    assert crash == (
        "tool 'fx__crash' failed: MCP server 'fx' stopped during the call "
        "(the next call starts a new session)"
    )
    assert before.isdigit() and after.isdigit() and before != after


async def test_a_server_that_dies_while_idle_is_noticed_and_started_again(
    workspace_dir: Path,
) -> None:
    add_fixture(workspace_dir)
    uses(workspace_dir, "[fx__pid]")
    rt, _ = runtime(workspace_dir, [])
    ctx = ToolContext(0, 0, "veblen", workspace_dir / "var", rt.settings, rt.store)

    async def pid() -> int:
        res = await rt.tools.call("fx__pid", "{}", ctx, allowed={"fx__*"}, max_chars=100)
        assert res.ok, res
        return int(res.content)

    try:
        await rt.tools.prepare(["fx__*"])
        first = await pid()
        os.kill(first, signal.SIGKILL)
        from harness.tools.mcp_pool import McpPool

        [pool] = [s for s in rt.tools._sources if isinstance(s, McpPool)]
        with anyio.fail_after(5):
            while pool.server("fx").up:
                await anyio.sleep(0.02)
        assert pool.server("fx").error == "its output ended"
        second = await pid()
    finally:
        await rt.aclose()
    assert second != first
    assert descendants() == []


async def test_an_http_server_that_restarts_gets_a_new_session(workspace_dir: Path) -> None:
    port = free_port()
    add_server(workspace_dir, "web", url=f"http://127.0.0.1:{port}/mcp")
    uses(workspace_dir, "[web__*]")
    rt, _ = runtime(workspace_dir, [])
    ctx = ToolContext(0, 0, "veblen", workspace_dir / "var", rt.settings, rt.store)

    async def call(name: str) -> str:
        res = await rt.tools.call(name, "{}", ctx, allowed={"web__*"}, max_chars=500)
        return res.content

    try:
        with http_fixture(port=port):
            await rt.tools.prepare(["web__*"])
            first = await call("web__pid")
            crash = await call("web__crash")  # the whole HTTP server exits mid-call
            down = await call("web__pid")
        with http_fixture(port=port):
            second = await call("web__pid")
    finally:
        await rt.aclose()
    assert crash.endswith(
        "MCP server 'web' stopped during the call (the next call starts a new session)"
    )
    assert "MCP server 'web' is unavailable: ConnectError" in down
    assert first.isdigit() and second.isdigit() and first != second


async def test_include_and_exclude_choose_the_tools_a_wildcard_offers(
    workspace_dir: Path, fixture_server: Callable[..., None]
) -> None:
    fixture_server(workspace_dir, include=["e*", "add", "pid"], exclude=["env"])
    uses(workspace_dir, "[fx__*]")
    rt, provider = runtime(workspace_dir, ["done"])
    try:
        run = await finish(rt)
    finally:
        await rt.aclose()
    assert run["status"] == "done"
    assert offered(provider.requests[0]) == ["fx__add", "fx__echo", "fx__pid"]


async def test_an_excluded_tool_named_by_an_agent_fails_the_task_without_retry(
    workspace_dir: Path,
) -> None:
    add_fixture(workspace_dir, exclude=["env"])
    uses(workspace_dir, "[fx__env]")
    rt, provider = runtime(workspace_dir, [])
    try:
        run = await finish(rt)
    finally:
        await rt.aclose()
    assert run["status"] == "failed" and provider.requests == []
    assert "MCP server 'fx' has no tool fx__env (fx__env excluded by include/exclude)" in str(
        run["error"]
    )


async def test_a_server_that_cannot_start_fails_the_task_and_the_queue_retries_it(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_WORKER__RETRY_BACKOFF_S", "0.05")
    add_server(workspace_dir, "gone", command=str(workspace_dir / "no-such-server"))
    uses(workspace_dir, "[gone__*]")
    rt, provider = runtime(workspace_dir, [])
    try:
        run = await finish(rt)
    finally:
        await rt.aclose()
    assert run["status"] == "failed" and provider.requests == []
    [task] = run["tasks"]
    assert task["attempts"] == rt.settings.worker.max_attempts == 3  # each attempt retried
    assert "MCP server 'gone' is unavailable: FileNotFoundError" in task["error"]


async def test_a_server_that_never_answers_is_given_up_and_killed(workspace_dir: Path) -> None:
    add_fixture(workspace_dir, args=[str(FIXTURE), "mute"], connect_timeout_s=1)
    uses(workspace_dir, "[fx__*]")
    rt, _ = runtime(workspace_dir, [])
    started = time.monotonic()
    try:
        with pytest.raises(ToolsUnavailable) as caught:
            await rt.tools.prepare(["fx__*"])
        assert descendants() == []  # deaf to its stdin closing: terminated
    finally:
        await rt.aclose()
    assert time.monotonic() - started < 10  # 1 s, then the SDK's bounded kill escalation
    assert str(caught.value) == (
        "MCP server 'fx' is unavailable: did not start within 1s (mcp.servers.fx.connect_timeout_s)"
    )
    assert caught.value.retryable


async def test_secrets_of_env_and_headers_never_reach_transcripts_or_the_database(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("FX_SECRET", "env-" + os.urandom(8).hex())
    monkeypatch.setenv("FX_NOT_PASSED", "never-passed-through")
    monkeypatch.setenv("FX_AUTH", f"Bearer {token}")
    add_fixture(workspace_dir, env=["FX_SECRET"])
    with http_fixture(token) as url:
        add_server(workspace_dir, "web", url=url, headers_env={"Authorization": "FX_AUTH"})
        uses(workspace_dir, "[fx__env, web__header]")
        calls = ScriptedProvider.tool_calls(
            ("fx__env", {"name": "FX_SECRET"}),
            ("fx__env", {"name": "FX_NOT_PASSED"}),
            ("web__header", {"name": "Authorization"}),
        )
        rt, provider = runtime(workspace_dir, [calls, answer_with_results])
        try:
            run = await finish(rt)
            rows = await rt.store.read(lambda c: c.execute(select(messages.c.content)).all())
        finally:
            await rt.aclose()
    assert run["status"] == "done", run
    results = [m.content or "" for m in provider.requests[1].messages if m.role == "tool"]
    assert results == [
        "FX_SECRET=[redacted]",  # passed through (the server saw it), never shown
        "FX_NOT_PASSED=<unset>",  # not named in env: not passed
        "Authorization: [redacted]",  # the whole header value is the secret
    ]
    stored = "\n".join(str(r[0]) for r in rows)
    db = b"".join(p.read_bytes() for p in (workspace_dir / "var").glob("harness.db*"))
    logged = capsys.readouterr().err
    for secret in (token, os.environ["FX_SECRET"]):
        assert secret not in stored and secret.encode() not in db and secret not in logged
