"""``harness``: the command-line app. Each family of commands lives in its own module and is
registered here; this module holds the top-level options, ``init`` and ``db upgrade``.

Exit codes: 0 success, 1 the work failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import agents, ledger, mcp, models, ops, runs, serve
from ._common import EXIT_USAGE, State, err, fail, out, workspace

app = typer.Typer(
    rich_markup_mode=None,
    name="harness",
    help="A runtime for teams of LLM agents that work unattended overnight.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(rich_markup_mode=None, help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.callback()
def _main(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Workspace folder (default: current folder or $HARNESS_WORKSPACE).",
        ),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log JSON lines even on a terminal.")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "",
) -> None:
    from .. import logs

    State.workspace_dir = workspace
    State.log_level_given = bool(log_level or os.environ.get("HARNESS_LOG_LEVEL"))
    level = log_level or os.environ.get("HARNESS_LOG_LEVEL", "info")
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown level {level!r}", param_hint="--log-level")
    logs.configure(json=True if log_json else None, level=level)


def main() -> None:
    """Console-script entry point: maps ConfigError to exit code 2 with every problem listed."""
    from ..errors import ConfigError

    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {len(exc.problems)} problem(s):", highlight=False)
        for p in exc.problems:
            err.print(f"  {p}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.")],
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
) -> None:
    """Write a new workspace (config, the default team of agents, example tools) to DIRECTORY."""
    from ..workspace import write_workspace

    if directory.exists() and any(directory.iterdir()) and not force:
        fail(f"{directory} is not empty (use --force to write into it)")
    written = write_workspace(directory)
    out.print(f"wrote {len(written)} files to {directory}", markup=False)
    out.print(
        f"next: cd {directory} && harness agents validate && harness run 'your goal'",
        markup=False,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (also done automatically on first use)."""
    from ..store import engine as db

    ws = workspace()
    engine = db.make_engine(ws.database_url())
    try:
        applied = db.upgrade(engine)
        out.print(
            f"database {db.redact(ws.database_url())} at revision {db.current_revision(engine)}"
            + (" (upgraded)" if applied else " (already current)"),
            highlight=False,
            markup=False,
        )
    finally:
        engine.dispose()


for family in (agents, runs, ledger, ops, serve, mcp, models):
    family.register(app)
