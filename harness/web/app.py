"""The dashboard's Starlette application: routes, templates, and what every handler shares.

``create_app(rt, guard=..., read_only=...)`` builds it for a runtime (its workspace, team and
store); ``harness serve`` runs it with uvicorn. Handlers live in ``pages`` (HTML, forms) and
``api`` (JSON, CSV, ``/metrics``); both read through ``reading`` and the CLI's query functions.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from ..runtime import Runtime
from ..telemetry import DatabaseCollector
from . import api, pages
from .board import HERE, Dashboard, templates
from .security import Guard, GuardMiddleware

__all__ = ["create_app"]


def create_app(rt: Runtime, *, guard: Guard | None = None, read_only: bool = False) -> Starlette:
    """The dashboard for ``rt``'s workspace. ``guard``: who may look and act (default: no
    token, loopback Host headers only)."""
    guard = guard or Guard()
    registry = CollectorRegistry(auto_describe=True)
    board = Dashboard(rt, guard, read_only, templates(rt), registry)
    registry.register(DatabaseCollector(rt.store, rt.settings, board.budgets))
    static = Mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app = Starlette(
        routes=[*pages.routes(), *api.routes(), static],
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        exception_handlers={HTTPException: pages.not_found},
    )
    app.state.dashboard = board
    return app
