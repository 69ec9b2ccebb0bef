"""What every command shares: the consoles, the workspace, the store, JSON output, failing.

Heavy modules are imported inside the functions that need them, so that ``harness --help``
and the read-only commands start fast.
"""

from __future__ import annotations

import json
import os
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
    from ..store.light import Reader
    from ..usage import Budget

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_ID = 2**63 - 1  # run and task ids: a database's 64-bit integers
MAX_SLOTS = 10_000  # ``-c``: the bound of settings' worker.concurrency (MAX_CONCURRENCY)

# tables, trees and panels wrap to the width (see fit_width): they never crop; plain text (an
# answer, a prompt) is printed with soft_wrap, unbroken
out = Console()
err = Console(stderr=True, soft_wrap=True)
PIPED_WIDTH = 160


def fit_width() -> None:
    """Size ``out`` for this command: ``$COLUMNS`` when set, else the terminal's, else (piped)
    ``PIPED_WIDTH`` columns."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        out.width = int(columns)
    elif not out.is_terminal:
        out.width = PIPED_WIDTH


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable, documented shape).")]


class State:
    """Options of the ``harness`` command itself, set before a subcommand runs."""

    workspace_dir: Path | None = None
    log_json = False
    log_level_given = False  # --log-level or HARNESS_LOG_LEVEL: wins over the config's
    quieted = False  # the command keeps to warnings unless a level was given


def quiet() -> None:
    """Log warnings and errors only, unless a level was asked for (``--log-level``); the
    output format stays as configured."""
    from .. import logs

    State.quieted = True
    if not State.log_level_given:
        logs.configure(json=True if State.log_json else None, level="warning")


def workspace() -> Workspace:
    """The workspace (``--workspace``, ``$HARNESS_WORKSPACE`` or the current folder), its
    settings loaded: ConfigError (exit 2) when it is not one. Its ``log_level`` applies
    unless a level was given on the command line or in the environment."""
    from .. import logs
    from ..settings import load_workspace

    ws = load_workspace(State.workspace_dir)
    level = ws.settings.log_level
    if not (State.log_level_given or State.quieted) and level != "info":
        logs.configure(json=True if State.log_json else None, level=level)
    return ws


def team(ws: Workspace, *, tools: bool = True) -> Team:
    """The workspace's agents, validated with its tools (the workspace's ``tools/*.py`` are
    imported and MCP servers named); with ``tools=False`` the tool names are not checked and
    nothing is imported: for listings, which ``agents validate`` stands behind."""
    from ..agents import ANY_TOOL, load_team

    if not tools:
        return load_team(ws.agents_dir, ws.settings, ANY_TOOL)
    from ..runtime import load_agents, load_tools

    return load_agents(ws, load_tools(ws))


def budgets(ws: Workspace) -> dict[str, Budget]:
    """Each agent's daily budget (the agent files read, their tools not imported)."""
    agents = team(ws, tools=False)
    return {name: agents[name].budget(ws.settings) for name in agents.names()}


@contextmanager
def opened_store(ws: Workspace) -> Iterator[Store]:
    """The workspace's store, closed after use. A database error inside (the file turned
    read-only, damaged, the server gone) is the one-line ConfigError of ``engine.unusable``."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    from ..store import Store
    from ..store.engine import unusable

    store = Store.open_workspace(ws)
    try:
        yield store
    except (DBAPIError, sqlite3.Error) as exc:
        raise unusable(ws.database_url(), exc) from None
    finally:
        store.close()


@contextmanager
def opened_reader(ws: Workspace) -> Iterator[Reader | Store]:
    """For a read-only command: the light reader (``sqlite3``, no SQLAlchemy: see
    ``store.light``) when the database is a current SQLite file, else the store."""
    from ..store.light import open_reader

    reader = open_reader(ws.database_url())
    if reader is None:
        with opened_store(ws) as store:
            yield store
        return
    try:
        yield reader
    finally:
        reader.close()


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, every known secret redacted (control characters
    are escaped by JSON itself)."""
    from ..scrub import redact_data

    sys.stdout.write(json.dumps(redact_data(data), indent=2, default=str) + "\n")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` on stderr (redacted, control characters made visible) and
    exit with ``code``."""
    from ..scrub import shown

    err.print(f"[red]error:[/red] {escape(shown(message))}", highlight=False)
    raise typer.Exit(code)
