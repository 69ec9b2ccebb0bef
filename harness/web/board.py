"""What every handler shares: the runtime, the rules, the templates, the metrics registry."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..runtime import Runtime
from ..usage import Budget
from .charts import colour
from .reading import local_time
from .security import Guard

__all__ = ["HERE", "Dashboard", "dashboard", "templates"]

HERE = Path(__file__).parent


@dataclass
class Dashboard:
    """What handlers share: the runtime, the rules, the templates, the metrics registry."""

    rt: Runtime
    guard: Guard
    read_only: bool
    templates: Environment
    registry: CollectorRegistry

    def budgets(self) -> dict[str, Budget]:
        """Each agent's daily budget now (agent files are reloaded when they change)."""
        self.rt.reload_team()
        team, settings = self.rt.team, self.rt.settings
        return {name: team[name].budget(settings) for name in team.names()}

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """Template ``name`` with the page's common context (CSRF token, read-only, ...)."""
        html = self.templates.get_template(name).render(
            request=request,
            csrf=self.guard.csrf,
            read_only=self.read_only,
            signed_in=self.guard.token is not None,
            workspace=self.rt.workspace.root.name,
            team=self.rt.team.names(),
            version=version("harness"),
            **context,
        )
        return HTMLResponse(html, status_code=status)


def dashboard(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board


def templates(rt: Runtime) -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    settings = rt.settings
    env.filters["local"] = lambda iso: local_time(iso, settings)
    env.filters["num"] = lambda n: f"{int(n or 0):,}"
    env.filters["usd"] = lambda x: f"${float(x or 0):,.4f}"
    env.filters["ago"] = _ago
    env.globals["colour"] = colour
    env.globals["tz"] = settings.timezone
    return env


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h {s % 3600 // 60}m"
