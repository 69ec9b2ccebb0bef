"""Submitting and running work, and looking at it: ``run``, ``submit``, ``worker``,
``status``, ``show``, ``cancel``, ``serve-local``."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    MAX_ID,
    MAX_SLOTS,
    JsonOpt,
    State,
    err,
    fail,
    opened_reader,
    opened_store,
    out,
    print_json,
    team,
    workspace,
)

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Connection

    from ..errors import Problem, ProviderError
    from ..runtime import Runtime
    from ..settings import Settings, Workspace
    from ..worker import Worker


def _chief(ws: Workspace, agent: str | None, *, tools: bool = True) -> str:
    """The agent a goal goes to (``agent`` or the chief), checked against the team (with
    ``tools``, the agents' tools validated too)."""
    agents = team(ws, tools=tools)
    name = agent or ws.settings.chief
    if name not in agents:
        fail(f"unknown agent {name!r} (known: {', '.join(agents.names())})")
    return name


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
    from ..store import queue
    from .batch import read_goals

    ws = workspace()
    if (goal is None) == (from_file is None):
        fail("give either a GOAL or --from FILE")
    items = read_goals(from_file) if from_file else [(None, goal or "")]
    names = {a: _chief(ws, a or agent) for a in {a for a, _ in items}}
    max_attempts = ws.settings.worker.max_attempts
    with opened_store(ws) as store:

        def enqueue(conn: Connection) -> list[int]:
            return [
                queue.create_run(conn, g, names[a], max_attempts=max_attempts)[0] for a, g in items
            ]

        ids = store.write_sync(enqueue)
    if as_json:
        print_json(ids)
    else:
        for run_id in ids:
            out.print(run_id)


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", min=1, max=MAX_SLOTS, help="Task slots."),
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit when nothing is left to run.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve this worker's Prometheus metrics on this port."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run tasks until stopped (SIGTERM/SIGINT drain gracefully; a second signal exits at once)."""
    import anyio

    from ..errors import DatabaseFailing
    from ..runtime import open_runtime
    from ..store import Store
    from ..telemetry import attached
    from ..worker import STARTUP_WAIT_S, Worker

    ws = workspace()
    slots = concurrency or ws.settings.worker.concurrency
    metrics = (metrics_host, metrics_port) if metrics_port is not None else None

    # a worker (re)started while the database restarts waits for it, as running ones do
    store = Store.open_workspace(ws, wait_s=STARTUP_WAIT_S)

    async def main() -> None:
        async with open_runtime(ws, store=store) as rt, attached(rt, metrics=metrics):
            await Worker(rt, slots, until_idle=until_idle).run()

    try:
        anyio.run(main)
    except DatabaseFailing as exc:
        fail(str(exc))


def run(
    goal: Annotated[str, typer.Argument(help="The goal for the run.")],
    agent: Annotated[
        str | None, typer.Option(help="Agent to hand the goal to (default: the chief).")
    ] = None,
    as_json: JsonOpt = False,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, max=MAX_SLOTS)
    ] = None,
    show_ledger: Annotated[
        bool, typer.Option("--show-ledger", help="Print the run's ledger at the end.")
    ] = False,
    answer_only: Annotated[
        bool,
        typer.Option("--answer-only", help="Print the final answer without the specialists'."),
    ] = False,
) -> None:
    """Submit a run and work it to the end in this process; print the final answer and,
    under it, what each specialist handed back."""
    import anyio

    from .. import logs
    from ..errors import DatabaseFailing

    if out.is_terminal and not State.log_level_given:
        State.quieted = True
        logs.configure(level="warning")  # the live task tree shows progress; keep it clean
    ws = workspace()
    name = _chief(ws, agent, tools=False)  # the runtime loads the tools, and checks them
    slots = concurrency or ws.settings.worker.concurrency
    try:
        result = anyio.run(_work, ws, goal, name, slots, None if as_json else out)
    except DatabaseFailing as exc:
        fail(str(exc))
    ok = result["status"] == "done"
    if as_json:
        _print_result(result, ok)
    else:
        _print_outcome(result, ok, with_specialists=not answer_only)
    if show_ledger and not as_json:
        from .ledger import print_ledger_for_run

        print_ledger_for_run(ws, result["id"], out)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def _print_result(run: dict[str, Any], ok: bool) -> None:
    print_json(
        {
            "run_id": run["id"],
            "status": run["status"],
            "answer": run["answer"],
            "error": run["error"] or (None if ok else run["reason"]),
            "usage": run["usage"],
        }
    )


def _print_outcome(run: dict[str, Any], ok: bool, *, with_specialists: bool) -> None:
    """The answer (or why there is none) as plain text, then each specialist's result."""
    from ..scrub import shown
    from .display import safe, specialists

    if ok:
        out.print(shown(run["answer"] or ""), markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(f"[red]run {run['id']} {run['status']}[/]: ", end="")
        why = run["error"] or run["reason"] or ""
        out.print(shown(why), markup=False, highlight=False, soft_wrap=True)
    for task in specialists(run) if with_specialists else []:
        out.print()
        out.rule(f"{safe(task['agent'])} (task {task['id']}, {safe(task['status'])})", style="dim")
        text = task["result"] if task["status"] == "done" else f"error: {task['error']}"
        out.print(shown(text or ""), markup=False, highlight=False, soft_wrap=True)


async def _work(
    ws: Workspace, goal: str, agent: str, concurrency: int, console: Console | None
) -> dict[str, Any]:
    """Submit ``goal`` and work its run in this process until it is settled, or until
    nothing of it can go on now (e.g. a task paused for budget: the run says why)."""
    import anyio
    from rich.live import Live

    from ..errors import ConfigError
    from ..runtime import open_runtime
    from ..store import queue, views
    from ..telemetry import attached
    from ..telemetry.hooks import fan_out
    from ..worker import Worker
    from . import display

    async with open_runtime(ws) as rt, attached(rt):
        _preflight(rt, agent)
        store = rt.store
        max_attempts = rt.settings.worker.max_attempts
        run_id, _ = await store.write(queue.create_run, goal, agent, max_attempts=max_attempts)
        setup_errors: list[ProviderError] = []

        async def finished() -> bool:
            return bool(setup_errors) or await store.read(queue.run_blocked_or_settled, run_id)

        w = Worker(rt, concurrency, run_id=run_id, stop_when=finished)
        rt.on_event = fan_out(rt.on_event, partial(_stop_on_setup_error, w, setup_errors))
        if console is not None and console.is_terminal:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                async with anyio.create_task_group() as tg:

                    async def refresh() -> None:
                        while True:
                            shown = await store.read(views.get_run, run_id)
                            if shown:
                                live.update(display.task_tree(shown))
                            await anyio.sleep(0.5)

                    tg.start_soon(refresh)
                    await w.run()
                    tg.cancel_scope.cancel()
                final = await store.read(views.get_run, run_id)
                if final:
                    live.update(display.task_tree(final))
        else:
            await w.run()
        if setup_errors:  # in the foreground, a setup error fails at once (exit 2)
            raise ConfigError(_setup_problem(rt.settings, setup_errors[0]))
        result = await store.read(views.get_run, run_id)
        assert result is not None
        return result


def _preflight(rt: Runtime, agent: str) -> None:
    """Before anything is submitted: the servers of the models the team uses answer and take
    the key (else one line per model, naming the endpoint and the setting; exit 2); then one
    line says which model and endpoint the run uses."""
    from ..errors import ConfigError
    from ..provider.probe import complaints, where

    models = rt.models_in_use()
    problems = complaints(rt.settings, models, rt.probes)
    if problems:
        raise ConfigError(problems)
    chief = rt.team[agent].model_name(rt.settings)
    err.print(f"using {where(rt.settings, chief)}", markup=False, highlight=False)


def _stop_on_setup_error(w: Worker, seen: list[ProviderError], event: str, data: Any) -> None:
    from ..errors import ProviderError

    error = data.get("error") if event == "model_failed" else None
    if isinstance(error, ProviderError) and error.setup and not seen:
        seen.append(error)
        w.stop()


def _setup_problem(settings: Settings, error: ProviderError) -> Problem:
    from ..errors import Problem
    from ..provider.probe import config_key, where
    from ..settings import CONFIG_FILE

    kind = {401: "auth", 403: "auth", 404: "model"}.get(error.status or 0)
    model = error.model if error.model in settings.models else settings.default_model
    status = f"HTTP {error.status}" if error.status else "could not connect"
    what = {"auth": "the API key was refused", "model": "the server does not know this model"}
    detail = what.get(kind or "", status)
    key = config_key(settings, model, kind)
    return Problem(CONFIG_FILE, f"{where(settings, model)}: {detail} ({status})", key)


def status(
    run_id: Annotated[
        int | None, typer.Argument(min=1, max=MAX_ID, help="One run, with its task tree.")
    ] = None,
    as_json: JsonOpt = False,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many recent runs (and running tasks).")
    ] = 20,
) -> None:
    """Runs and their status; with RUN_ID, one run and its task tree."""
    from .. import clock
    from ..store import views
    from . import display

    ws = workspace()
    with opened_reader(ws) as store:
        if run_id is None:
            data: Any = store.read_sync(views.list_runs, limit=limit)
            live = store.read_sync(views.live_work)
        else:
            data = store.read_sync(views.get_run, run_id)
            if data is None:
                fail(f"no run {run_id}")
    if as_json:
        print_json(data)
    elif run_id is None:
        display.print_runs(out, data, clock.now())
        display.print_live(out, live, limit)
    else:
        display.print_run(out, data, clock.now())


def show(
    run_id: Annotated[int, typer.Argument(min=1, max=MAX_ID, help="The run.")],
    task: Annotated[
        int | None,
        typer.Option("--task", min=1, max=MAX_ID, help="Print this task's transcript."),
    ] = None,
    as_sent: Annotated[
        bool,
        typer.Option(
            "--as-sent",
            help="With --task: the messages as the model receives them now (compactions "
            "applied), not the whole transcript.",
        ),
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Plain text, every task's input and result in full (for machines)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a run: its task tree (status, agent, tokens), answer and the specialists'
    results, or one task's transcript (--task, its compactions marked). Nothing is cut:
    long text wraps."""
    from .. import clock
    from ..store import views
    from . import display

    if full and as_json:
        fail("--full and --json are two different outputs: give one")
    if as_sent and task is None:
        fail("--as-sent shows one task's messages: give --task too")
    ws = workspace()
    with opened_reader(ws) as store:
        run_data = store.read_sync(views.get_run, run_id)
        if run_data is None:
            fail(f"no run {run_id}")
        msgs = None
        if task is not None and not as_sent:
            msgs = store.read_sync(views.transcript, task)
    if task is not None and not _in_tree(run_data["tasks"], task):
        fail(f"task {task} is not part of run {run_id}")
    if as_sent and task is not None:  # the view is built by the loop's code (SQLAlchemy)
        with opened_store(ws) as full_store:
            msgs = full_store.read_sync(_as_sent, task)
    if as_json:
        print_json(msgs if msgs is not None else run_data)
    elif full:
        text = display.plain_transcript(msgs) if msgs is not None else display.plain_run(run_data)
        sys.stdout.write(text)
    elif msgs is not None:
        display.print_transcript(out, task or 0, msgs)
    else:
        display.print_run(out, run_data, clock.now())


def _as_sent(conn: Connection, task_id: int) -> list[dict[str, Any]]:
    """A task's messages as its next request would send them (``context.View``)."""
    from ..context import View
    from ..store import views
    from ..store.compactions import load_compactions
    from ..store.transcripts import load_transcript

    view = View(load_transcript(conn, task_id), load_compactions(conn, task_id))
    return [
        views.message_item(
            None,
            m.role,
            m.content,
            [c.model_dump() for c in m.tool_calls or []],
            m.tool_call_id,
            m.name,
        )
        for m in view.messages()
    ]


def _in_tree(nodes: list[dict[str, Any]], task_id: int) -> bool:
    return any(n["id"] == task_id or _in_tree(n["children"], task_id) for n in nodes)


def cancel(
    run_id: Annotated[
        int, typer.Argument(min=1, max=MAX_ID, help="The run to cancel (its whole task tree).")
    ],
) -> None:
    """Cancel a run and every unfinished task in it."""
    from ..store import queue, views

    ws = workspace()
    with opened_store(ws) as store:
        if store.read_sync(views.get_run, run_id) is None:
            fail(f"no run {run_id}")
        n = store.write_sync(queue.cancel_run, run_id)
    out.print(f"cancelled {n} task(s) of run {run_id}")


def serve_local(
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: config local.port).")
    ] = None,
) -> None:
    """Run the embedded llama.cpp server with the bundled model in the foreground."""
    from ..provider.local import serve_forever

    ws = workspace()
    raise typer.Exit(serve_forever(ws.settings, port))


def register(app: typer.Typer) -> None:
    for command in (run, submit, worker, status, show, cancel):
        app.command()(command)
    app.command("serve-local")(serve_local)
