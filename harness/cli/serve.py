"""``harness serve``: the web dashboard, its JSON API and ``/metrics``, in the foreground."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ._common import err, fail, workspace


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (not loopback: needs a token).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8700,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Offer no actions (no cancel, no submit).")
    ] = False,
) -> None:
    """Serve the dashboard: today's spend against budgets, runs and their transcripts, the
    ledger, schedules, the morning report; JSON under /api/, Prometheus at /metrics.

    Bound to a loopback address it needs no login; on any other address it needs
    HARNESS_DASHBOARD_TOKEN (sent as 'Authorization: Bearer', or entered on /login).
    """
    import uvicorn

    from ..errors import ConfigError
    from ..runtime import build_runtime
    from ..web import TOKEN_ENV, Guard, create_app

    try:
        guard = Guard.for_bind(host, os.environ.get(TOKEN_ENV))
    except ConfigError as exc:
        fail(str(exc.problems[0].message))
    rt = build_runtime(workspace())
    app = create_app(rt, guard=guard, read_only=read_only)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"harness dashboard on http://{shown}:{port}/", highlight=False, markup=False)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
    finally:
        rt.store.close()


def register(app: typer.Typer) -> None:
    app.command()(serve)
