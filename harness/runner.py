"""``harness run``: submit a goal and work it to the end in this process."""

from __future__ import annotations

from typing import Any

import anyio
from rich.console import Console
from rich.live import Live

from . import display, queue, views
from .schema import TaskStatus
from .settings import Workspace

EXIT_OK, EXIT_FAILED = 0, 1


async def _work(
    ws: Workspace, goal: str, agent: str, concurrency: int, console: Console | None
) -> dict[str, Any]:
    from .cli import _runtime
    from .worker import Worker

    async with _runtime(ws) as rt:
        store = rt.store
        run_id, _ = await store.write(
            queue.create_run, goal, agent, max_attempts=rt.settings.worker.max_attempts
        )

        async def finished() -> bool:
            """Done when the root task is settled, or when nothing of the run can go on
            now (e.g. a task paused for budget: the run's status then says why)."""
            return await store.read(queue.run_blocked_or_settled, run_id)

        w = Worker(rt, concurrency, run_id=run_id, stop_when=finished)
        if console is not None and console.is_terminal:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                async with anyio.create_task_group() as tg:

                    async def refresh() -> None:
                        while True:
                            run = await store.read(views.get_run, run_id)
                            if run:
                                live.update(display.task_tree(run))
                            await anyio.sleep(0.5)

                    tg.start_soon(refresh)
                    await w.run()
                    tg.cancel_scope.cancel()
                final = await store.read(views.get_run, run_id)
                if final:
                    live.update(display.task_tree(final))
        else:
            await w.run()
        run = await store.read(views.get_run, run_id)
        assert run is not None
        return run


def run_goal(
    ws: Workspace,
    goal: str,
    agent: str,
    *,
    as_json: bool,
    concurrency: int | None,
    show_ledger: bool,
    console: Console,
) -> int:
    slots = concurrency or ws.settings.worker.concurrency
    run = anyio.run(_work, ws, goal, agent, slots, None if as_json else console)
    ok = run["status"] == TaskStatus.DONE
    if as_json:
        import json
        import sys

        sys.stdout.write(
            json.dumps(
                {
                    "run_id": run["id"],
                    "status": run["status"],
                    "answer": run["answer"],
                    "error": run["error"] or (None if ok else run["reason"]),
                    "usage": run["usage"],
                },
                indent=2,
            )
            + "\n"
        )
        return EXIT_OK if ok else EXIT_FAILED
    if ok:
        console.print(run["answer"] or "", markup=False, highlight=False)
    else:
        console.print(
            f"[red]run {run['id']} {run['status']}[/]: {run['error'] or run['reason'] or ''}"
        )
    if show_ledger:
        from .cli_ledger import print_ledger_for_run

        print_ledger_for_run(ws, run["id"], console)
    return EXIT_OK if ok else EXIT_FAILED
