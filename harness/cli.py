"""``harness <command>``: wires settings, store, provider, tools and worker.

Exit codes: 0 success, 1 the work failed, 2 bad usage or configuration.
Heavy modules are imported inside commands so that ``harness --help`` starts fast.
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

if TYPE_CHECKING:
    from .settings import Workspace
    from .store import Store

app = typer.Typer(
    rich_markup_mode=None,
    name="harness",
    help="A runtime for teams of LLM agents that work unattended overnight.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
agents_app = typer.Typer(
    rich_markup_mode=None,
    help="List, show and validate the workspace's agents.",
    no_args_is_help=True,
)
db_app = typer.Typer(rich_markup_mode=None, help="Database schema.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable, documented shape).")]


class State:
    workspace_dir: Path | None = None
    log_level_given = False


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
    from . import logs

    State.workspace_dir = workspace
    State.log_level_given = bool(log_level or os.environ.get("HARNESS_LOG_LEVEL"))
    level = log_level or os.environ.get("HARNESS_LOG_LEVEL", "info")
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown level {level!r}", param_hint="--log-level")
    logs.configure(json=True if log_json else None, level=level)


def main() -> None:
    """Console-script entry point: maps ConfigError to exit code 2 with every problem listed."""
    from .errors import ConfigError

    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {len(exc.problems)} problem(s):", highlight=False)
        for p in exc.problems:
            err.print(f"  {p}", highlight=False, markup=False)
        sys.exit(2)


def workspace() -> Workspace:
    from .settings import load_workspace

    return load_workspace(State.workspace_dir)


@contextmanager
def opened_store(ws: Workspace) -> Iterator[Store]:
    from .store import Store

    store = Store.open(ws.database_url())
    try:
        yield store
    finally:
        store.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


# -- init, agents, db ----------------------------------------------------------------------


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new workspace.")],
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
) -> None:
    """Write a new workspace (config, the default team of agents, example tools) to DIRECTORY."""
    from .workspace import write_workspace

    if directory.exists() and any(directory.iterdir()) and not force:
        fail(f"{directory} is not empty (use --force to write into it)")
    written = write_workspace(directory)
    out.print(f"wrote {len(written)} files to {directory}")
    out.print(f"next: cd {directory} && harness agents validate && harness run 'your goal'")


def _team() -> tuple[Workspace, Any]:
    from .runtime import load_agents, load_tools

    ws = workspace()
    return ws, load_agents(ws, load_tools(ws))


def _agent_dict(spec: Any, ws: Workspace) -> dict[str, Any]:
    data: dict[str, Any] = spec.model_dump()
    data["model"] = spec.model_name(ws.settings)
    return data


@agents_app.command("list")
def agents_list(as_json: JsonOpt = False) -> None:
    """List agents: name, model, tools, delegates, budget."""
    from rich.table import Table

    ws, team = _team()
    if as_json:
        print_json([_agent_dict(team[n], ws) | {"prompt": None} for n in team.names()])
        return
    table = Table("agent", "model", "tools", "delegates to", "daily tokens", "description")
    for name in team.names():
        a = team[name]
        budget = (
            a.daily_token_budget
            if a.daily_token_budget is not None
            else ws.settings.budgets.default_daily_tokens
        )
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
    ws, team = _team()
    if name not in team:
        fail(f"unknown agent {name!r} (known: {', '.join(team.names())})")
    data = _agent_dict(team[name], ws)
    if as_json:
        print_json(data)
        return
    prompt = data.pop("prompt")
    for key, value in data.items():
        out.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    out.print()
    out.print(prompt, markup=False, highlight=False)


@agents_app.command("validate")
def agents_validate(as_json: JsonOpt = False) -> None:
    """Check every agent file and print all problems (exit 2 when there are any)."""
    from .errors import ConfigError
    from .runtime import load_agents, load_tools

    try:
        ws = workspace()
        team = load_agents(ws, load_tools(ws))
    except ConfigError as exc:
        if as_json:
            print_json({"ok": False, "problems": [p.__dict__ for p in exc.problems]})
            raise typer.Exit(2) from exc
        raise
    if as_json:
        print_json({"ok": True, "agents": team.names(), "problems": []})
    else:
        out.print(f"[green]ok[/green]: {len(team.names())} agents: {', '.join(team.names())}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (also done automatically on first use)."""
    from . import db

    ws = workspace()
    engine = db.make_engine(ws.database_url())
    try:
        applied = db.upgrade(engine)
        out.print(
            f"database {db.redact(ws.database_url())} at revision {db.current_revision(engine)}"
            + (" (upgraded)" if applied else " (already current)"),
            highlight=False,
        )
    finally:
        engine.dispose()


# -- submitting and running work -------------------------------------------------------------


def _chief(ws: Workspace, agent: str | None) -> str:
    from .runtime import load_agents, load_tools

    team = load_agents(ws, load_tools(ws))
    name = agent or ws.settings.chief
    if name not in team:
        fail(f"unknown agent {name!r} (known: {', '.join(team.names())})")
    return name


@app.command()
def submit(
    goal: Annotated[str | None, typer.Argument(help="The goal for the run.")] = None,
    agent: Annotated[
        str | None, typer.Option(help="Agent to hand the goal to (default: the chief).")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Enqueue many runs: one goal per line, or JSON lines with 'goal' and 'agent'.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue a run (or many) for a worker and print the run id(s)."""
    from . import queue
    from .batch import read_goals

    ws = workspace()
    if (goal is None) == (from_file is None):
        fail("give either a GOAL or --from FILE")
    items = read_goals(from_file) if from_file else [(None, goal or "")]
    names = {a: _chief(ws, a or agent) for a in {a for a, _ in items}}
    max_attempts = ws.settings.worker.max_attempts
    with opened_store(ws) as store:

        def enqueue(conn: Any) -> list[int]:
            return [
                queue.create_run(conn, g, names[a], max_attempts=max_attempts)[0] for a, g in items
            ]

        ids = store.write_sync(enqueue)
    if as_json:
        print_json(ids)
    else:
        for run_id in ids:
            out.print(run_id)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Task slots.")
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit when nothing is left to run.")
    ] = False,
) -> None:
    """Run tasks until stopped (SIGTERM/SIGINT drain gracefully; a second signal exits at once)."""
    import anyio

    from .worker import Worker

    ws = workspace()

    async def main() -> None:
        async with _runtime(ws) as rt:
            await Worker(
                rt, concurrency or ws.settings.worker.concurrency, until_idle=until_idle
            ).run()

    anyio.run(main)


def _runtime(ws: Workspace, **kwargs: Any) -> Any:
    """Async context: the local model server (if needed), then a runtime, closed on exit."""
    from contextlib import asynccontextmanager

    from .local import ensure_local_server
    from .runtime import build_runtime

    @asynccontextmanager
    async def cm() -> Any:
        rt = build_runtime(ws, **kwargs)
        try:
            async with ensure_local_server(
                ws.settings, log_path=ws.var_dir / "local-server.log", models=rt.models_in_use()
            ):
                yield rt
        finally:
            await rt.aclose()

    return cm()


@app.command()
def run(
    goal: Annotated[str, typer.Argument(help="The goal for the run.")],
    agent: Annotated[
        str | None, typer.Option(help="Agent to hand the goal to (default: the chief).")
    ] = None,
    as_json: JsonOpt = False,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1)] = None,
    show_ledger: Annotated[
        bool, typer.Option("--show-ledger", help="Print the run's ledger at the end.")
    ] = False,
) -> None:
    """Submit a run and work it to the end in this process; print the final answer."""
    from . import logs
    from .runner import run_goal

    if out.is_terminal and not State.log_level_given:
        logs.configure(level="warning")  # the live task tree shows progress; keep it clean
    ws = workspace()
    name = _chief(ws, agent)
    code = run_goal(
        ws,
        goal,
        name,
        as_json=as_json,
        concurrency=concurrency,
        show_ledger=show_ledger,
        console=out,
    )
    raise typer.Exit(code)


@app.command()
def status(
    run_id: Annotated[int | None, typer.Argument(help="One run, with its task tree.")] = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="How many recent runs.")] = 20,
) -> None:
    """Runs and their status; with RUN_ID, one run and its task tree."""
    from . import display, views

    ws = workspace()
    with opened_store(ws) as store:
        if run_id is None:
            data: Any = store.read_sync(views.list_runs, limit=limit)
            live = store.read_sync(display.live_work)
        else:
            data = store.read_sync(views.get_run, run_id)
            if data is None:
                fail(f"no run {run_id}")
    if as_json:
        print_json(data)
    elif run_id is None:
        display.print_runs(out, data)
        display.print_live(out, live)
    else:
        display.print_run(out, data)


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="The run.")],
    task: Annotated[
        int | None, typer.Option("--task", help="Print this task's transcript.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a run's task tree (status, agent, tokens), or one task's transcript."""
    from . import display, views

    ws = workspace()
    with opened_store(ws) as store:
        run_data = store.read_sync(views.get_run, run_id)
        if run_data is None:
            fail(f"no run {run_id}")
        msgs = store.read_sync(views.transcript, task) if task is not None else None
    if task is not None and not _in_tree(run_data["tasks"], task):
        fail(f"task {task} is not part of run {run_id}")
    if as_json:
        print_json(msgs if msgs is not None else run_data)
    elif msgs is not None:
        display.print_transcript(out, task or 0, msgs)
    else:
        display.print_run(out, run_data)


def _in_tree(nodes: list[dict[str, Any]], task_id: int) -> bool:
    return any(n["id"] == task_id or _in_tree(n["children"], task_id) for n in nodes)


@app.command()
def cancel(
    run_id: Annotated[int, typer.Argument(help="The run to cancel (its whole task tree).")],
) -> None:
    """Cancel a run and every unfinished task in it."""
    from . import queue, views

    ws = workspace()
    with opened_store(ws) as store:
        if store.read_sync(views.get_run, run_id) is None:
            fail(f"no run {run_id}")
        n = store.write_sync(queue.cancel_run, run_id)
    out.print(f"cancelled {n} task(s) of run {run_id}")


@app.command("serve-local")
def serve_local(
    port: Annotated[int | None, typer.Option(help="Port (default: config local.port).")] = None,
) -> None:
    """Run the embedded llama.cpp server with the bundled model in the foreground."""
    from .local import serve_forever

    ws = workspace()
    raise typer.Exit(serve_forever(ws.settings, port))


def _register_more() -> None:
    from . import cli_ledger, cli_ops

    cli_ledger.register(app)
    cli_ops.register(app)


_register_more()
