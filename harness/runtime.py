"""The runtime: a workspace's settings, team, tools, provider and store, wired once.

The runtime's settings are the workspace's with every model's context window and prices
filled in (``provider.catalogue``): from the config, the servers' probes (when opened with
:func:`open_runtime`) and the model catalogue. ``Runtime.facts`` says where each came from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from .agents import Team, load_team
from .errors import ConfigError, Problem
from .provider import OpenAIProvider, Provider, catalogue
from .provider.local import ensure_local_server
from .provider.probe import Clients, Probe, probe_models, reported_windows
from .provider.tokens import Calibration
from .settings import Settings, Workspace
from .store import Store
from .store.access import transient
from .store.model_stats import load_model_stats
from .tools import ToolRegistry, default_registry, load_workspace_tools
from .tools.mcp_pool import attach_mcp

log = structlog.get_logger("harness.runtime")


def load_tools(workspace: Workspace, problems: list[Problem] | None = None) -> ToolRegistry:
    """The built-in tools plus the workspace's ``tools/*.py`` and MCP servers (which start
    only when a task needs them). A tool file that fails raises ConfigError, or with
    ``problems`` given is added to it (the other files' tools are loaded all the same)."""
    registry = default_registry()
    if workspace.tools_dir.is_dir():
        load_workspace_tools(workspace.tools_dir, registry, problems)
    attach_mcp(registry, workspace)
    return registry


def load_agents(workspace: Workspace, tools: ToolRegistry) -> Team:
    return load_team(workspace.agents_dir, workspace.settings, tools)


def _agents_signature(workspace: Workspace) -> tuple[tuple[str, float, int], ...]:
    files = sorted(workspace.agents_dir.glob("*.md"))
    return tuple((p.name, p.stat().st_mtime, p.stat().st_size) for p in files)


@dataclass
class Runtime:
    """Everything a task needs. ``on_event`` lets a UI follow progress."""

    workspace: Workspace
    team: Team
    tools: ToolRegistry
    provider: Provider
    store: Store
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    facts: dict[str, catalogue.Facts] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    probes: dict[str, Probe] = field(default_factory=dict)  # by provider, when opened
    _agents_sig: tuple[tuple[str, float, int], ...] = field(default=(), repr=False)

    @property
    def settings(self) -> Settings:
        return self.workspace.settings

    def emit(self, event: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, data)

    def reload_team(self) -> bool:
        """Reload agent files when they changed on disk (e.g. a raised budget). A file that
        no longer validates is logged and the previous team kept. True when reloaded."""
        try:
            sig = _agents_signature(self.workspace)
        except OSError:
            return False
        if sig == self._agents_sig:
            return False
        self._agents_sig = sig
        try:
            self.team = load_agents(self.workspace, self.tools)
        except ConfigError as exc:
            log.error("agents_reload_failed", problems=[str(p) for p in exc.problems])
            return False
        log.info("agents_reloaded", agents=self.team.names())
        return True

    def learn(self, probes: dict[str, Probe]) -> None:
        """Take the windows servers reported into the settings (and the facts)."""
        self.probes = probes
        windows = reported_windows(self.settings, probes)
        if windows:
            settings, self.facts = catalogue.resolve(self.workspace.settings, windows)
            self.workspace = replace(self.workspace, settings=settings)

    def models_in_use(self) -> set[str]:
        """The models the team's agents use, with their fallbacks."""
        names = {self.team[a].model_name(self.settings) for a in self.team.names()}
        for name in list(names):
            names.update(self.settings.models[name].fallbacks)
        return names

    async def aclose(self) -> None:
        """Stop what the runtime started (MCP servers included), then close the provider
        and the store."""
        await self.tools.aclose()
        await self.provider.aclose()
        self.store.close()


def build_runtime(
    workspace: Workspace,
    *,
    provider: Provider | None = None,
    store: Store | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Runtime:
    """Wire a runtime for ``workspace``; ``provider``/``store`` may be given (tests)."""
    tools = load_tools(workspace)
    team = load_agents(workspace, tools)
    kept = workspace.var_dir / catalogue.KEPT_FILE
    settings, facts = catalogue.resolve(workspace.settings, kept=kept)
    resolved = replace(workspace, settings=settings)
    rt = Runtime(
        workspace=resolved,
        team=team,
        tools=tools,
        provider=provider or OpenAIProvider(settings),
        store=store or Store.open_workspace(workspace),
        on_event=on_event,
        facts=facts,
    )
    rt._agents_sig = _agents_signature(workspace)
    return rt


def _own_clients(provider: OpenAIProvider) -> Clients:
    """The probes go through the provider's own clients: one TLS context and one connection
    per server, which the first model call then reuses (no set-up of its own)."""
    return lambda name: provider.client(name).http_client()


@asynccontextmanager
async def open_runtime(workspace: Workspace, **kwargs: Any) -> AsyncIterator[Runtime]:
    """A runtime for ``workspace`` (see :func:`build_runtime`) with the embedded model's
    server running when its agents need it, closed (and the server stopped) on exit."""
    rt = build_runtime(workspace, **kwargs)
    try:
        try:
            rt.calibration.load(await rt.store.read(load_model_stats))
        except Exception as exc:  # a cache: a database blip now only costs the warm start
            if not transient(exc):
                raise
            log.warning("model_stats_unread", error=str(exc).splitlines()[0][:200])
        provider = rt.provider if kwargs.get("provider") is None else None
        clients = _own_clients(provider) if isinstance(provider, OpenAIProvider) else None
        rt.learn(await probe_models(rt.settings, rt.models_in_use(), clients))
        log_path = workspace.var_dir / "local-server.log"
        async with ensure_local_server(rt.settings, log_path=log_path, models=rt.models_in_use()):
            yield rt
    finally:
        await rt.aclose()
