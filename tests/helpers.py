"""Helpers for tests that run agents: a runtime on a temp workspace with a scripted provider."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from harness.messages import ChatRequest
from harness.runtime import Runtime, build_runtime
from harness.settings import load_workspace
from harness.store import Store, queue
from harness.testing import ScriptedProvider, StepLike
from harness.worker import Worker


class Tap(httpx.AsyncBaseTransport):
    """A real transport that keeps the status and ``usage`` of every chat completion reply."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.usages: list[dict[str, Any]] = []  # the usage of each 200 reply that has one
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if request.url.path.endswith("/chat/completions"):
            self.statuses.append(response.status_code)
            if response.status_code == 200:
                try:
                    usage = json.loads(body).get("usage")
                except ValueError:
                    usage = None
                if usage:
                    self.usages.append(usage)
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    async def aclose(self) -> None:
        await self.inner.aclose()


def agent_of(request: ChatRequest) -> str:
    """Which default-team agent a request is for (from its system prompt)."""
    system = request.messages[0].content or ""
    m = re.search(r"You are R\. (?:Mini )?(\w+)", system)
    return m.group(1).lower() if m else "?"


def by_agent(
    answers: dict[str, Callable[[ChatRequest], StepLike]],
) -> Callable[[ChatRequest], StepLike]:
    """A dynamic script choosing the answer by the requesting agent."""
    return lambda request: answers[agent_of(request)](request)


def runtime(
    ws_dir: Path, script: Any, db_url: str | None = None
) -> tuple[Runtime, ScriptedProvider]:
    ws = load_workspace(ws_dir)
    provider = script if isinstance(script, ScriptedProvider) else ScriptedProvider(script)
    store = Store.open(db_url or ws.database_url())
    return build_runtime(ws, provider=provider, store=store), provider


async def work(rt: Runtime, concurrency: int = 4, **kw: Any) -> Worker:
    w = Worker(rt, concurrency, until_idle=True, handle_signals=False, **kw)
    await w.run()
    return w


def maintain(rt: Runtime, worker_id: int = 0) -> None:
    """One pass of a worker's maintenance (every duty, each in its own transaction)."""
    w = Worker(rt, handle_signals=False, id=worker_id)
    anyio.run(partial(w.maintain, force=True))


async def submit(rt: Runtime, goal: str, agent: str = "arnold") -> tuple[int, int]:
    return await rt.store.write(
        queue.create_run, goal, agent, max_attempts=rt.settings.worker.max_attempts
    )


def no_shrinking(ws_dir: Path) -> None:
    """Calls never get a shrunk ``max_tokens`` near the end of a budget (for scripted answers
    with canned usage, which a server's cap would have cut)."""
    toml = ws_dir / "config/harness.toml"
    toml.write_text(
        toml.read_text().replace("[budgets]\n", "[budgets]\nmin_output_tokens = 100000\n")
    )


def set_front_matter(path: Path, key: str, value: str) -> None:
    """Replace (or add) one front matter field of an agent file."""
    text = path.read_text()
    head, body = text.split("\n---\n", 1)
    lines = [ln for ln in head.splitlines() if not ln.startswith(f"{key}:")]
    lines.append(f"{key}: {value}")
    path.write_text("\n".join(lines) + "\n---\n" + body)
