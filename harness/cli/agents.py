"""``harness agents list|show|validate``: the workspace's agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from ._common import EXIT_USAGE, JsonOpt, fail, out, print_json, quiet, team, workspace

if TYPE_CHECKING:
    from ..agents import AgentSpec
    from ..errors import Problem
    from ..settings import Workspace

agents_app = typer.Typer(
    rich_markup_mode=None,
    help="List, show and validate the workspace's agents.",
    no_args_is_help=True,
)


def _agent_dict(spec: AgentSpec, ws: Workspace) -> dict[str, Any]:
    data: dict[str, Any] = spec.model_dump()
    data["model"] = spec.model_name(ws.settings)
    return data


@agents_app.command("list")
def agents_list(as_json: JsonOpt = False) -> None:
    """List agents: name, model, tools, delegates, budget (`agents validate` checks them)."""
    from .display import safe, table

    ws = workspace()
    agents = team(ws, tools=False)
    if as_json:
        print_json([_agent_dict(agents[n], ws) | {"prompt": None} for n in agents.names()])
        return
    grid = table("agent", "model", "tools", "delegates to", "daily tokens", "description")
    for name in agents.names():
        a = agents[name]
        budget = a.budget(ws.settings).tokens
        grid.add_row(
            safe(name),
            safe(a.model_name(ws.settings)),
            safe(", ".join(a.tools)),
            safe(", ".join(a.delegates_to)),
            f"{budget:,}" if budget is not None else "-",
            safe(a.description),
        )
    out.print(grid)


@agents_app.command("show")
def agents_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one agent, including its system prompt."""
    ws = workspace()
    agents = team(ws, tools=False)
    if name not in agents:
        fail(f"unknown agent {name!r} (known: {', '.join(agents.names())})")
    data = _agent_dict(agents[name], ws)
    if as_json:
        print_json(data)
        return
    from ..scrub import shown

    prompt = data.pop("prompt")
    for key, value in data.items():
        out.print(f"[bold]{key}[/bold]: ", end="", highlight=False)
        out.print(shown(str(value)), markup=False, highlight=False, soft_wrap=True)
    out.print()
    out.print(shown(prompt), markup=False, highlight=False, soft_wrap=True)


@agents_app.command("validate")
def agents_validate(as_json: JsonOpt = False) -> None:
    """Check every agent file and print all problems (exit 2 when there are any). MCP tool
    names are checked against their servers, which are started (and stopped) for it."""
    import anyio

    from ..errors import ConfigError, Problem
    from ..runtime import load_agents, load_tools
    from ..tools.mcp_check import check_agent_tools

    quiet()  # servers starting and stopping are not the news here
    ws = workspace()
    problems: list[Problem] = []
    tools = load_tools(ws, problems)  # a broken tool file is one problem among the others
    agents = None
    try:
        agents = load_agents(ws, tools)
    except ConfigError as exc:
        problems += _blame_broken_tools(exc.problems, problems)
    problems = anyio.run(check_agent_tools, ws, tools, problems)
    problems.sort(key=Problem.sort_key)
    if problems and as_json:
        print_json({"ok": False, "problems": [p.__dict__ for p in problems]})
        raise typer.Exit(EXIT_USAGE)
    if problems or agents is None:
        raise ConfigError(problems)
    if as_json:
        print_json({"ok": True, "agents": agents.names(), "problems": []})
    else:
        out.print(f"[green]ok[/green]: {len(agents.names())} agents: ", end="")
        out.print(", ".join(agents.names()), markup=False)


def _blame_broken_tools(found: list[Problem], tool_problems: list[Problem]) -> list[Problem]:
    """Agent problems, an unknown tool's hinting at the tool files that failed to load (one
    of them may define it)."""
    from dataclasses import replace
    from pathlib import Path

    broken = sorted({Path(p.file).name for p in tool_problems})
    if not broken:
        return found
    hint = f"{', '.join(broken)} failed to load and may define it"
    return [
        replace(p, hint=p.hint or hint) if p.message.startswith("unknown tool") else p
        for p in found
    ]


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app, name="agents")
