"""The MCP servers of a workspace as one :class:`~harness.tools.base.ToolSource`.

Building a pool starts nothing (and imports no MCP code: ``harness submit`` stays quick): it
only claims the names ``<server>__<tool>`` and ``<server>__*`` of the configured servers, so
agent files validate at once. Servers start when a task first needs their tools
(:meth:`McpPool.tools`), or for ``harness mcp list`` (:meth:`McpPool.status`), side by side.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from ..errors import ConfigError, Problem, ToolsUnavailable
from ..settings import CONFIG_FILE, Workspace
from .base import Tool, ToolRegistry

if TYPE_CHECKING:
    from .mcp import McpServer
    from .mcp_io import Secrets

__all__ = ["McpPool", "attach_mcp"]


class McpPool:
    """The configured MCP servers of one process (each started at most once at a time)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.configs = dict(sorted(workspace.settings.mcp.servers.items()))
        self._servers: dict[str, McpServer] = {}
        self._secrets: Secrets | None = None

    def server(self, name: str) -> McpServer:
        """The configured server ``name`` (its client code is loaded on first use)."""
        from .mcp import McpServer  # the MCP SDK takes ~0.4 s to import: only when used
        from .mcp_io import Secrets

        if name not in self._servers:
            self._secrets = self._secrets or Secrets()
            ws = self.workspace
            self._servers[name] = McpServer(
                name,
                self.configs[name],
                root=ws.root,
                log_dir=ws.var_dir / "mcp",
                secrets=self._secrets,
            )
        return self._servers[name]

    def server_of(self, name: str) -> str | None:
        """The server a tool name (or ``<server>__*``) belongs to, if any."""
        prefix, sep, rest = name.partition("__")
        return prefix if sep and rest and prefix in self.configs else None

    def claims(self, name: str) -> bool:
        return self.server_of(name) is not None

    async def tools(self, names: Collection[str]) -> list[Tool]:
        """The tools ``names`` stand for; the servers they need start side by side. Raises
        the first server's ToolsUnavailable when one cannot serve."""
        wanted: dict[str, list[str]] = {}
        for name in names:
            server = self.server_of(name)
            if server is not None:
                wanted.setdefault(server, []).append(name)
        found: dict[str, list[Tool] | ToolsUnavailable] = {}

        async def fetch(server: McpServer, names: list[str]) -> None:
            try:
                found[server.name] = await server.tools(names)
            except ToolsUnavailable as exc:
                found[server.name] = exc

        async with anyio.create_task_group() as tg:
            for name, server_names in wanted.items():
                tg.start_soon(fetch, self.server(name), server_names)
        out: list[Tool] = []
        for name in sorted(found):
            result = found[name]
            if isinstance(result, ToolsUnavailable):
                raise result
            out += result
        return out

    async def status(self) -> list[dict[str, Any]]:
        """Each server started (side by side), with its status and tools after filtering:
        the rows of ``harness mcp list --json``."""
        servers = [self.server(name) for name in self.configs]
        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(_start_quietly, server)
        return [_row(server) for server in servers]

    async def aclose(self) -> None:
        """Stop every server this pool started (side by side)."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for server in self._servers.values():
                    tg.start_soon(server.aclose)


async def _start_quietly(server: McpServer) -> None:
    with suppress(ToolsUnavailable):  # the row says why
        await server.client()


def _target(server: McpServer) -> str:
    cfg = server.config
    if cfg.url is not None:  # no query string or user info: either may hold a token
        parts = urlsplit(cfg.url)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    return " ".join([cfg.command or "", *cfg.args])


def _row(server: McpServer) -> dict[str, Any]:
    listing = server.listing or {}
    return {
        "server": server.name,
        "transport": "http" if server.config.url is not None else "stdio",
        "target": _target(server),
        "status": "up" if server.up else "unavailable",
        "error": None if server.up else server.error,
        "tools": [
            {"name": name, "mcp_name": t.name, "description": t.description or ""}
            for name, t in sorted(listing.items())
        ],
        "excluded": sorted(server.hidden.values()),
    }


def attach_mcp(registry: ToolRegistry, workspace: Workspace) -> McpPool | None:
    """Add the workspace's MCP servers to ``registry`` (None when it configures none).
    A tool of another source whose name starts ``<server>__`` is a ConfigError."""
    if not workspace.settings.mcp.servers:
        return None
    pool = McpPool(workspace)
    problems = []
    for name in registry:
        server = pool.server_of(name)
        if server is not None:
            t = registry.get(name)
            where = t.origin if t is not None and t.origin else "<tool>"
            message = f"tool {name!r} takes the prefix of MCP server {server!r}"
            problems.append(Problem(where, message + f" ({CONFIG_FILE}: mcp.servers.{server})"))
    if problems:
        raise ConfigError(problems)
    registry.add_source(pool)
    return pool
