"""harness's tools for MCP clients: hand it a goal, follow the run, read the ledger.

Every tool reads and writes through the functions the CLI uses (``store.queue`` to create
and cancel runs, ``store.views`` for runs and task trees, ``ledger.reads`` for the ledger),
so a client sees exactly what ``harness status --json``, ``harness show --json`` and
``harness ledger --json`` print. Each result is structured content (a JSON object) with a
JSON text copy; a bad argument or an unknown run is an ``isError`` result naming it.
Workers do the work, as for ``harness submit``: this server only enqueues and reads.
"""

from __future__ import annotations

import importlib.metadata
from datetime import date
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from .. import clock
from ..agents import Team
from ..errors import ConfigError
from ..ledger import day_of, reads
from ..runtime import load_agents, load_tools
from ..settings import Workspace
from ..store import Store, TaskStatus, queue, views

__all__ = ["INSTRUCTIONS", "build_server"]

INSTRUCTIONS = """harness runs teams of LLM agents unattended. submit_run hands a goal to an
agent (by default the chief of staff) and returns at once with a run_id; workers do the work,
which may take minutes. Poll run_status(run_id) until status is done, failed or cancelled;
show_run gives the task tree with tokens; ledger gives token use per day and agent."""


class _Harness:
    """The workspace and store the tools act on (agent files are read again per call, so
    a changed team is seen without a restart)."""

    def __init__(self, workspace: Workspace, store: Store) -> None:
        self.workspace, self.store = workspace, store
        self.tools = load_tools(workspace)

    def team(self) -> Team:
        try:
            return load_agents(self.workspace, self.tools)
        except ConfigError as exc:
            raise ToolError(f"the workspace's agent files do not validate: {exc}") from None

    async def run(self, run_id: int) -> dict[str, Any]:
        run = await self.store.read(views.get_run, run_id)
        if run is None:
            raise ToolError(f"no run {run_id}")
        return run

    async def workers_note(self) -> str | None:
        live = await self.store.read(views.live_work)
        return None if live["workers"] else "no worker is running: start one with harness worker"


def build_server(workspace: Workspace, store: Store) -> MCPServer:
    """The MCP server for ``workspace``, reading and writing ``store``."""
    h = _Harness(workspace, store)
    version = importlib.metadata.version("harness")
    app = MCPServer("harness", version=version, instructions=INSTRUCTIONS, log_level="WARNING")

    @app.tool()
    async def submit_run(goal: str, agent: str | None = None) -> dict[str, Any]:
        """Start a run: hand the goal to an agent (default: the chief of staff). Returns
        its run_id at once; workers do the work. Poll run_status for the answer."""
        team = h.team()
        name = agent or workspace.settings.chief
        if name not in team:
            raise ToolError(f"unknown agent {name!r} (known: {', '.join(team.names())})")
        if not goal.strip():
            raise ToolError("the goal is empty")
        attempts = workspace.settings.worker.max_attempts
        run_id, _ = await store.write(queue.create_run, goal, name, max_attempts=attempts)
        return {"run_id": run_id, "agent": name, "status": "queued", "note": await h.workers_note()}

    @app.tool()
    async def run_status(run_id: int) -> dict[str, Any]:
        """A run's status (queued, running, waiting, paused, done, failed, cancelled), its
        answer when done, its error when failed, why it waits, and its token usage."""
        run = await h.run(run_id)
        settled = run["status"] in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)
        note = None if settled else await h.workers_note()
        keys = ("status", "answer", "error", "reason", "usage")
        return {"run_id": run_id, **{k: run[k] for k in keys}, "note": note}

    @app.tool()
    async def list_runs(status: TaskStatus | None = None, limit: int = 20) -> dict[str, Any]:
        """The most recent runs, newest first (optionally only those with a status)."""
        if not 1 <= limit <= 1000:
            raise ToolError("limit must be between 1 and 1000")
        runs = await store.read(views.list_runs, limit=limit, status=status)
        return {"runs": runs}

    @app.tool()
    async def show_run(run_id: int) -> dict[str, Any]:
        """A run with its task tree: each task's agent, status, result or error, and tokens."""
        return await h.run(run_id)

    @app.tool()
    async def cancel_run(run_id: int) -> dict[str, Any]:
        """Cancel a run and every unfinished task in it."""
        await h.run(run_id)
        n = await store.write(queue.cancel_run, run_id)
        return {"run_id": run_id, "cancelled_tasks": n}

    @app.tool()
    async def ledger(day: str | None = None, agent: str | None = None) -> dict[str, Any]:
        """Token use per day and agent against budgets (the rows of harness ledger --json).
        day: YYYY-MM-DD or "today" (default: every day); agent: only this agent."""
        if day == "today":
            day = day_of(clock.now(), workspace.settings.tz)
        if day is not None:
            try:
                date.fromisoformat(day)
            except ValueError:
                raise ToolError(f"day: not a date (YYYY-MM-DD or 'today'): {day!r}") from None
        team = h.team()
        budgets = {name: team[name].budget(workspace.settings) for name in team.names()}
        rows = await store.read(reads.rows, budgets, since=day, until=day, agent=agent)
        return {"rows": rows}

    return app
