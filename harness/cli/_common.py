"""What every command shares: the consoles, the workspace, the store, JSON output, failing.

Heavy modules are imported inside the functions that need them, so that ``harness --help``
and the read-only commands start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ..agents import Team
    from ..settings import Workspace
    from ..store import Store
    from ..usage import Budget

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable, documented shape).")]


class State:
    """Options of the ``harness`` command itself, set before a subcommand runs."""

    workspace_dir: Path | None = None
    log_level_given = False


def quiet() -> None:
    """Log warnings and errors only, unless a level was asked for (``--log-level``); the
    output format stays as configured."""
    import logging

    import structlog

    if not State.log_level_given:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def workspace() -> Workspace:
    from ..settings import load_workspace

    return load_workspace(State.workspace_dir)


def team(ws: Workspace) -> Team:
    """The workspace's agents, validated (with its tools: agents name them)."""
    from ..runtime import load_agents, load_tools

    return load_agents(ws, load_tools(ws))


def budgets(ws: Workspace) -> dict[str, Budget]:
    """Each agent's daily budget."""
    agents = team(ws)
    return {name: agents[name].budget(ws.settings) for name in agents.names()}


@contextmanager
def opened_store(ws: Workspace) -> Iterator[Store]:
    from ..store import Store

    store = Store.open(ws.database_url())
    try:
        yield store
    finally:
        store.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)
