"""``harness agents list|show|validate``: the workspace's agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from ._common import EXIT_USAGE, JsonOpt, fail, out, print_json, quiet, team, workspace

if TYPE_CHECKING:
    from ..agents import AgentSpec
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
    """List agents: name, model, tools, delegates, budget."""
    from rich.table import Table

    ws = workspace()
    agents = team(ws)
    if as_json:
        print_json([_agent_dict(agents[n], ws) | {"prompt": None} for n in agents.names()])
        return
    table = Table("agent", "model", "tools", "delegates to", "daily tokens", "description")
    for name in agents.names():
        a = agents[name]
        budget = a.budget(ws.settings).tokens
        table.add_row(
            name,
            a.model_name(ws.settings),
            ", ".join(a.tools),
            ", ".join(a.delegates_to),
            f"{budget:,}" if budget is not None else "-",
            a.description,
        )
    out.print(table)


@agents_app.command("show")
def agents_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one agent, including its system prompt."""
    ws = workspace()
    agents = team(ws)
    if name not in agents:
        fail(f"unknown agent {name!r} (known: {', '.join(agents.names())})")
    data = _agent_dict(agents[name], ws)
    if as_json:
        print_json(data)
        return
    prompt = data.pop("prompt")
    for key, value in data.items():
        out.print(f"[bold]{key}[/bold]: ", end="", highlight=False)
        out.print(str(value), markup=False, highlight=False)
    out.print()
    out.print(prompt, markup=False, highlight=False)


@agents_app.command("validate")
def agents_validate(as_json: JsonOpt = False) -> None:
    """Check every agent file and print all problems (exit 2 when there are any). MCP tool
    names are checked against their servers, which are started (and stopped) for it."""
    import anyio

    from ..errors import ConfigError
    from ..runtime import load_agents, load_tools
    from ..tools.mcp_check import check_agent_tools

    quiet()  # servers starting and stopping are not the news here
    ws = workspace()
    tools = load_tools(ws)
    try:
        agents, problems = load_agents(ws, tools), []
    except ConfigError as exc:
        agents, problems = None, exc.problems
    problems = anyio.run(check_agent_tools, ws, tools, problems)
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


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app, name="agents")
