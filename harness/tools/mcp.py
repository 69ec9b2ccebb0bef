"""One MCP server of ``[mcp.servers.NAME]`` in ``config/harness.toml``, over its life.

The pool (``mcp_pool.McpPool``) holds the configured servers of one process (one per worker,
shared by its tasks) and claims the names ``<server>__<tool>`` and ``<server>__*``. Each
:class:`McpServer` guarantees:

- it starts on first use (a task of an agent that names its tools), through the official SDK's
  ``Client`` over stdio or streamable HTTP, within ``connect_timeout_s`` (start, handshake and
  listing), never unbounded;
- a death is noticed when its output ends: the call in flight gets a tool error, and the next
  use starts it again after a backoff that doubles with each failure in a row (0.5 s to 30 s);
- every call is bounded by ``timeout_s``; a timeout, a protocol error or an ``isError`` result
  is a :class:`~harness.errors.ToolError` the model reads, and the task goes on;
- :meth:`McpPool.aclose` (from ``Runtime.aclose``) stops every server it started: a stdio
  server's stdin is closed, and its process group terminated, then killed, if it lingers;
- values of ``env`` and ``headers_env`` variables are never logged and are replaced by
  ``[redacted]`` in anything a server sends back; a stdio server's stderr goes to
  ``var/mcp/<server>.log``, which is the server's own output.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import time
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as mt
import structlog
from mcp import Client, MCPError, StdioServerParameters
from mcp.client import Transport
from mcp.client.stdio import stdio_client

from ..errors import HarnessError, ToolError, ToolsUnavailable
from ..settings import McpServerConfig
from .base import Tool
from .mcp_adapt import mcp_tool, result_text, selected, tool_names
from .mcp_io import Secrets, http, last_line, log_size, open_log, watched

__all__ = ["BACKOFF_MAX_S", "BACKOFF_S", "McpServer"]

log = structlog.get_logger("harness.tools.mcp")

BACKOFF_S = 0.5  # the first restart waits this long; each further failure doubles it
BACKOFF_MAX_S = 30.0
STOP_TIMEOUT_S = 10.0  # the SDK's own shutdown of a stdio server takes at most ~6 s
_VERSION = importlib.metadata.version("harness")
MAX_PAGES = 100  # of a tools/list walk: a server that pages forever cannot hang a start


@dataclass
class _Run:
    """One life of a server: its owner task's handles, and the session while it is up."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    up: anyio.Event = field(default_factory=anyio.Event)  # started, or failed to
    stop: anyio.Event = field(default_factory=anyio.Event)  # stop it (or: it died)
    done: anyio.Event = field(default_factory=anyio.Event)
    client: Client | None = None
    task: asyncio.Task[None] | None = None
    refused: str | None = None  # the last HTTP error status, e.g. "HTTP 401 Unauthorized"
    ended: bool = False  # the server stopped sending (it died, or ended the session)
    lost: bool = False  # counted as a failure already

    def server_ended(self) -> None:
        if not self.stop.is_set():  # not our own stop closing the streams
            self.ended = True
            self.stop.set()


class McpServer:
    """One configured server, started lazily and shared by every task of the process."""

    def __init__(
        self, name: str, config: McpServerConfig, *, root: Path, log_dir: Path, secrets: Secrets
    ) -> None:
        self.name, self.config = name, config
        self.root, self.log_dir, self.secrets = root, log_dir, secrets
        self.where = f"mcp.servers.{name}"
        self.listing: dict[str, mt.Tool] | None = None  # model name -> tool, after filtering
        self.hidden: dict[str, str] = {}  # model name -> server's name, of filtered-out tools
        self.error: str | None = None  # why the last start failed or the server died
        self.failures = 0  # starts failed and deaths in a row
        self._retry_at = 0.0
        self._run: _Run | None = None
        self._lock: anyio.Lock | None = None
        self._tools: dict[str, Tool] = {}

    @property
    def log_path(self) -> Path:
        """Where a stdio server's stderr goes."""
        return self.log_dir / f"{self.name}.log"

    @property
    def up(self) -> bool:
        return self._run is not None and self._run.client is not None

    # -- tools ---------------------------------------------------------------------------------

    async def tools(self, names: Collection[str]) -> list[Tool]:
        """The tools ``names`` ask for (``<server>__*`` is all of them). Starts the server if
        it is down; when it cannot start, the last listing is used if there is one."""
        try:
            await self.client()
        except ToolsUnavailable:
            if self.listing is None:
                raise
            log.warning("mcp_server_unavailable", server=self.name, error=self.error)
        wildcard = f"{self.name}__*"
        if wildcard in names:
            return list(self._tools.values())
        missing = sorted(set(names) - set(self._tools))
        if missing:
            raise ToolsUnavailable(self._missing(missing), source=self.where, retryable=False)
        return [self._tools[n] for n in names]

    def _missing(self, names: list[str]) -> str:
        have = ", ".join(sorted(self._tools)) or "none"
        hidden = [n for n in names if n in self.hidden]
        why = f" ({', '.join(hidden)} excluded by include/exclude)" if hidden else ""
        return f"MCP server {self.name!r} has no tool {', '.join(names)}{why}; it has: {have}"

    def _listed(self, tools: list[mt.Tool]) -> None:
        names = tool_names(self.name, [t.name for t in tools])
        by_name = {t.name: t for t in tools}
        cfg = self.config
        self.listing, self.hidden = {}, {}
        for name, raw in names.items():
            if selected(raw, cfg.include, cfg.exclude):
                self.listing[name] = by_name[raw]
            else:
                self.hidden[name] = raw
        self._tools = {n: mcp_tool(self.name, n, t, self.call) for n, t in self.listing.items()}

    # -- calls -----------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Run the server's tool ``tool``: its result as text, or ToolError."""
        try:
            client = await self.client()
        except ToolsUnavailable as exc:
            raise ToolError(str(exc)) from None
        run, timeout = self._run, self.config.timeout_s
        if run is not None:
            run.refused = None
        try:
            with anyio.fail_after(timeout):
                result = await client.call_tool(tool, arguments)
        except TimeoutError:
            raise ToolError(f"no answer within {timeout:g}s ({self.where}.timeout_s)") from None
        except MCPError as exc:
            refused = run.refused if run is not None else None
            if refused is not None and refused.startswith("HTTP 404"):  # the session is gone
                self._lost(run, f"the server forgot the session ({refused})")
            if exc.code != mt.CONNECTION_CLOSED:
                status = f" ({refused})" if refused else ""
                message = f"MCP server {self.name!r}: {exc}{status}"
                raise ToolError(self.secrets.redact(message)) from None
            self._lost(run, "the connection closed during a call")
            why = "stopped during the call (the next call starts a new session)"
            raise ToolError(f"MCP server {self.name!r} {why}") from None
        except (OSError, httpx2.HTTPError, anyio.BrokenResourceError) as exc:
            self._lost(run, _describe(exc))
            raise ToolError(f"MCP server {self.name!r} failed: {self.error}") from None
        self.failures = 0
        return self.secrets.redact(result_text(result))

    # -- life cycle --------------------------------------------------------------------------

    async def client(self) -> Client:
        """The live session, starting the server (after its backoff) when it is down.
        Raises ToolsUnavailable when it does not start within ``connect_timeout_s``."""
        self._lock = self._lock or anyio.Lock()
        async with self._lock:
            run = self._run
            if run is not None and run.client is not None and not run.stop.is_set():
                return run.client
            if run is not None and run.stop.is_set():
                await self._end(run)  # a life ending (it died): let it finish first
            if run is None or run.done.is_set():
                await anyio.sleep(max(self._retry_at - time.monotonic(), 0))
                run = self._run = _Run()
                run.task = asyncio.get_running_loop().create_task(self._own(run))
            with anyio.move_on_after(self.config.connect_timeout_s) as waiting:
                await run.up.wait()
            if waiting.cancelled_caught:
                t = self.config.connect_timeout_s
                await self._end(run, at_once=True)
                self.error = f"did not start within {t:g}s ({self.where}.connect_timeout_s)"
            if run.client is None:
                delay = self._failed()
                log.warning(
                    "mcp_server_start_failed", server=self.name, error=self.error, retry_in_s=delay
                )
                raise ToolsUnavailable(
                    f"MCP server {self.name!r} is unavailable: {self.error}", source=self.where
                )
            return run.client

    async def _own(self, run: _Run) -> None:
        """The owner task of one life: holds the session until told to stop, or until the
        server's output ends. (Its own task: the transport's task group must be entered and
        left by one task, which must outlive the tasks that use the server.)"""
        started, log_from = time.monotonic(), log_size(self.log_path)
        try:
            with run.scope:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(self._session(stack, run.server_ended))
                    self._listed(await _list_all(client))
                    run.client, self.error = client, None
                    run.up.set()
                    log.info(
                        "mcp_server_started",
                        server=self.name,
                        tools=len(self._tools),
                        seconds=round(time.monotonic() - started, 3),
                    )
                    await run.stop.wait()
        except Exception as exc:  # a start that failed, or a session that broke
            why = _describe(exc)
            if run.refused:
                why += f" ({run.refused})"
            elif not isinstance(_root(exc), OSError):  # it ran, and may have said why
                why += self._stderr(log_from)
            self.error = self.secrets.redact(why)
        finally:
            was_up, run.client = run.client is not None, None
            run.up.set()
            run.done.set()
            if was_up and run.ended:
                self._lost(run, self.error or "its output ended" + self._stderr(log_from))

    def _stderr(self, since: int) -> str:
        """What a stdio server last wrote to stderr (after ``since`` bytes of its log)."""
        last = last_line(self.log_path, since) if self.config.command is not None else ""
        return f"; its stderr ends: {last!r} ({self.log_path})" if last else ""

    def _session(self, stack: AsyncExitStack, on_end: Callable[[], None]) -> Client:
        cfg = self.config
        transport: Transport
        if cfg.url is not None:
            timeouts = (cfg.connect_timeout_s, cfg.timeout_s)
            transport = http(cfg.url, self._headers(), timeouts, self._refused)
        else:
            errlog = stack.enter_context(open_log(self.log_path))
            transport = stdio_client(self._params(), errlog=errlog)
        return Client(
            watched(transport, on_end),
            read_timeout_seconds=max(cfg.timeout_s, cfg.connect_timeout_s),
            client_info=mt.Implementation(name="harness", version=_VERSION),
        )

    def _refused(self, status: str) -> None:
        if self._run is not None:
            self._run.refused = status

    def _params(self) -> StdioServerParameters:
        cfg = self.config
        assert cfg.command is not None
        env = {}
        for var in cfg.env:
            if var in os.environ:
                env[var] = self.secrets.add(os.environ[var])
            else:
                log.warning("mcp_env_missing", server=self.name, variable=var)
        cwd = self.root / (cfg.cwd or ".")
        return StdioServerParameters(command=cfg.command, args=cfg.args, env=env, cwd=cwd)

    def _headers(self) -> dict[str, str]:
        headers = {}
        for header, var in self.config.headers_env.items():
            value = os.environ.get(var)
            if value is None:
                where = f"{self.where}.headers_env.{header}"
                raise ToolsUnavailable(f"variable {var} ({where}) is not set", source=where)
            headers[header] = self.secrets.add(value)
        return headers

    def _failed(self) -> float:
        """Count a failure; the next start waits the returned backoff."""
        self.failures += 1
        delay = min(BACKOFF_S * 2.0 ** (self.failures - 1), BACKOFF_MAX_S)
        self._retry_at = time.monotonic() + delay
        return delay

    def _lost(self, run: _Run | None, why: str) -> None:
        """``run`` died or its connection broke: the next use starts the server again."""
        if run is None or run.lost or run is not self._run:
            return
        run.lost = True
        self.error = self.secrets.redact(why)
        run.stop.set()
        delay = self._failed()
        log.warning("mcp_server_died", server=self.name, error=self.error, retry_in_s=delay)

    async def _end(self, run: _Run, *, at_once: bool = False) -> None:
        """Stop one life and wait (bounded, shielded) until its owner task is done; a
        session that does not close by itself (or ``at_once``: a start cut short) is
        cancelled, which the SDK's transports survive: their shutdown is shielded."""
        run.stop.set()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(0 if at_once else STOP_TIMEOUT_S):
                await run.done.wait()
            if not run.done.is_set():
                run.scope.cancel()
                with anyio.move_on_after(STOP_TIMEOUT_S):
                    await run.done.wait()

    async def aclose(self) -> None:
        """Stop the server if it runs; the next use would start it again."""
        run, self._run = self._run, None
        if run is not None and not run.done.is_set():
            await self._end(run)
            log.info("mcp_server_stopped", server=self.name)


async def _list_all(client: Client) -> list[mt.Tool]:
    tools: list[mt.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _root(exc: BaseException) -> BaseException:
    """The first error inside the exception groups of task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """One line for an error."""
    exc = _root(exc)
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, MCPError | HarnessError) else f"{type(exc).__name__}: {text}"
