"""``harness``: the command-line app. Each family of commands lives in its own module and is
registered here; this module holds the top-level options, ``init`` and ``db upgrade``.

Exit codes: 0 success, 1 the work failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..errors import ConfigError
from . import agents, ledger, mcp, models, ops, runs, serve
from ._common import EXIT_USAGE, State, err, fail, fit_width, out, workspace


def print_problems(exc: ConfigError) -> None:
    """``error: <problem>`` on stderr, or a count and one problem a line (file:line, field,
    message and hint each), in the order found."""
    from ..scrub import shown

    if len(exc.problems) == 1:
        err.print("[red]error:[/red] ", end="", highlight=False)
        err.print(shown(str(exc.problems[0])), markup=False, highlight=False)
        return
    err.print(f"[red]error:[/red] {len(exc.problems)} problems:", highlight=False)
    for p in exc.problems:
        err.print(f"  {shown(str(p))}", highlight=False, markup=False)


class _Harness(TyperGroup):
    """The ``harness`` group: a ConfigError from any command is printed as problems and
    exits 2 (in the console script and under a test runner alike)."""

    def invoke(self, ctx: Any) -> Any:  # (typer's click Context)
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            print_problems(exc)
            raise typer.Exit(EXIT_USAGE) from None


app = typer.Typer(
    cls=_Harness,
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

    fit_width()
    State.workspace_dir = workspace
    State.log_json = log_json
    State.log_level_given = bool(log_level or os.environ.get("HARNESS_LOG_LEVEL"))
    level = log_level or os.environ.get("HARNESS_LOG_LEVEL", "info")
    if level.lower() not in ("debug", "info", "warning", "error"):
        where = "--log-level" if log_level else "HARNESS_LOG_LEVEL"
        raise typer.BadParameter(f"unknown level {level!r}", param_hint=where)
    logs.configure(json=True if log_json else None, level=level)


def main() -> None:
    """Console-script entry point: maps ConfigError to exit code 2 with every problem listed
    (also done inside the app, for problems raised while a command runs).

    When the process exits, the interpreter's last garbage collections over every loaded
    module's objects are skipped: ``gc.freeze()`` at exit leaves them to the operating system
    (~200 ms after a worker, ~25 ms after a read-only command, measured). By then every
    command has closed its store and connections and flushed its output, and ``atexit``
    handlers registered after this one still run (first); Python never promised ``__del__``
    at exit."""
    atexit.register(gc.freeze)
    try:
        app()
    except ConfigError as exc:
        print_problems(exc)
        sys.exit(EXIT_USAGE)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.")],
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
) -> None:
    """Write a new workspace (config, the default team of agents, example tools) to DIRECTORY."""
    from ..workspace import write_workspace

    if directory.exists() and not directory.is_dir():
        fail(f"{directory} is not a folder")
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
    """Apply pending schema migrations (also done automatically on first use). The one
    command that accepts an empty (zero-byte) database file: it becomes a new database."""
    from ..store import engine as db

    ws = workspace()
    url = ws.database_url()
    engine = db.open_engine(url, migrate=False, allow_empty=True)  # may start afresh in it
    try:
        applied = db.checked_upgrade(engine, url)
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
