"""``harness agents validate``: the MCP tool names of agent files, checked against the servers.

Loading a team only checks that ``<server>__...`` names a configured server. Here every
server an agent names is started (each within its ``connect_timeout_s``, side by side) and
every name is looked up in its listing after include/exclude; each problem names the file,
the ``tools`` field and the line of the name in the front matter.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import anyio

from ..agents import agent_files, read_agent_file
from ..errors import Problem, ToolsUnavailable
from ..settings import CONFIG_FILE, Workspace
from .base import WILDCARD, ToolRegistry
from .mcp_adapt import tool_name
from .mcp_pool import McpPool

__all__ = ["check_agent_tools", "tool_line"]


def tool_line(path: Path, name: str) -> int | None:
    """The file line of ``name`` in the ``tools`` list of an agent file, or None."""
    af = read_agent_file(path)
    index = next((i for i, n in af.names("tools") if n == name), None)
    return af.line("tools", index) if "tools" in af.data else None


async def check_agent_tools(
    workspace: Workspace, registry: ToolRegistry, problems: Iterable[Problem] = ()
) -> list[Problem]:
    """``problems`` (from loading the team) with the MCP ones added: unknown servers,
    servers that do not start, unknown or excluded tools. A load problem "unknown tool"
    about an MCP-shaped name is replaced by the more precise one found here."""
    pool = McpPool(workspace)
    named = _mcp_names(workspace.agents_dir, registry)
    servers = {pool.server_of(n) for _, n in named} - {None}
    try:
        async with anyio.create_task_group() as tg:
            for server in sorted(s for s in servers if s is not None):
                tg.start_soon(_start, pool, server)
        found = [(path, name, _problem(pool, name)) for path, name in named]
    finally:
        await pool.aclose()
    covered = {(str(path), f"unknown tool {name!r}") for path, name, _ in found}
    out = [p for p in problems if p.field != "tools" or (p.file, p.message) not in covered]
    for path, name, message in found:
        if message is not None:
            out.append(Problem(str(path), message, "tools", tool_line(path, name)))
    return out


def _mcp_names(agents_dir: Path, registry: ToolRegistry) -> list[tuple[Path, str]]:
    """Every ``x__y`` name in an agent's ``tools`` that no other source defines."""
    out = []
    for path in agent_files(agents_dir):
        for _, name in read_agent_file(path).names("tools"):
            prefix, sep, rest = name.partition("__")
            if sep and prefix and rest and registry.get(name) is None:
                out.append((path, name))
    return out


async def _start(pool: McpPool, server: str) -> None:
    with suppress(ToolsUnavailable):  # reported per name
        await pool.server(server).client()


def _problem(pool: McpPool, name: str) -> str | None:
    prefix, _, rest = name.partition("__")
    if pool.server_of(name) is None:
        known = ", ".join(pool.configs) or "none"
        return (
            f"unknown MCP server {prefix!r} in {name!r} ({CONFIG_FILE} configures: {known}; "
            f"add [mcp.servers.{prefix}])"
        )
    server = pool.server(prefix)
    if not server.up:
        return f"MCP server {prefix!r} is unavailable: {server.error}"
    listing = server.listing or {}
    if name == prefix + WILDCARD or name in listing:
        return None
    if name in server.hidden:
        return f"{name!r} is excluded by {CONFIG_FILE} mcp.servers.{prefix}.include/exclude"
    guess = next(
        (n for n, t in listing.items() if n == tool_name(prefix, rest) or t.name == rest), None
    )
    hint = f"; did you mean {guess!r}?" if guess else f"; it has: {', '.join(listing) or 'none'}"
    return f"MCP server {prefix!r} has no tool {rest!r}{hint}"
