"""Serving harness over MCP: stdio, or streamable HTTP behind an optional bearer token.

Over HTTP the server binds 127.0.0.1 unless a token is configured (``[mcp.serve] token_env``
names the variable holding it): with a token every request must carry ``Authorization:
Bearer <token>`` (compared in constant time), or it gets a 401. With ``worker`` the process
also runs a worker (as ``harness worker``), so one command serves and works; it stops with
the server (draining, as on SIGTERM).
"""

from __future__ import annotations

import hmac
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import structlog
from mcp.server.mcpserver import MCPServer

from .. import logs
from ..errors import ConfigError, Problem
from ..runtime import open_runtime
from ..settings import CONFIG_FILE, Workspace
from ..store import Store
from ..worker import Worker
from .server import build_server

__all__ = ["LOOPBACK", "bearer_guard", "serve", "token"]

log = structlog.get_logger("harness.mcp")

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
ASGI = Callable[[Any, Any, Any], Awaitable[None]]


def token(workspace: Workspace) -> str | None:
    """The bearer token clients must send, if one is configured (never logged)."""
    name = workspace.settings.mcp.serve.token_env
    value = os.environ.get(name) if name else None
    if name and not value:
        where = f"{workspace.root / CONFIG_FILE}"
        raise ConfigError(Problem(where, f"variable {name} is not set", "mcp.serve.token_env"))
    logs.add_secret(value)
    return value


def bearer_guard(app: ASGI, expected: str) -> ASGI:
    """``app`` behind ``Authorization: Bearer <expected>``; anything else gets a 401."""
    want = f"Bearer {expected}".encode()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(got, want):
                headers = [(b"www-authenticate", b"Bearer"), (b"content-type", b"text/plain")]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": b"unauthorized\n"})
                return
        await app(scope, receive, send)

    return guarded


def _web(app: MCPServer, host: str, port: int, secret: str | None) -> Any:
    """A uvicorn server for ``app`` that leaves signals to harness (it would re-raise them
    after its shutdown, killing the process before the worker drains)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    asgi: ASGI = app.streamable_http_app(host=host)
    if secret is not None:
        asgi = bearer_guard(asgi, secret)
    return Server(uvicorn.Config(asgi, host=host, port=port, log_level="warning"))


async def _http(web: Any) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(web.serve)
        while not web.started and not web.should_exit:
            await anyio.sleep(0.02)
        for server in web.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("mcp_serving", transport="http", url=f"http://{host}:{port}/mcp")


async def _on_signal(stop: Callable[[], None]) -> None:
    """The first SIGTERM/SIGINT stops serving (the worker then drains); a second exits."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("mcp_stopping", signal=signum)
            stop()
            break
        async for _ in signals:
            os._exit(130)


@asynccontextmanager
async def _working(workspace: Workspace, concurrency: int | None) -> AsyncIterator[None]:
    """A worker in this process for the duration of the block (when asked for one)."""
    if concurrency is None:
        yield
        return
    async with open_runtime(workspace) as rt, anyio.create_task_group() as tg:
        worker = Worker(rt, concurrency, handle_signals=False)
        tg.start_soon(worker.run)
        try:
            yield
        finally:
            worker.stop()


async def serve(
    workspace: Workspace,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    worker: int | None = None,
) -> None:
    """Serve until the client goes (stdio: stdin closes) or the process is stopped.
    ``port``: streamable HTTP instead of stdio; ``worker``: run a worker with that many
    slots too. Refuses (ConfigError) to bind beyond loopback without a token."""
    secret = token(workspace) if port is not None else None  # stdio: the client started us
    if port is not None and host not in LOOPBACK and secret is None:
        where = str(workspace.root / CONFIG_FILE)
        message = f"serving on {host} needs a token: name its variable here"
        raise ConfigError(Problem(where, message, "mcp.serve.token_env"))
    store = Store.open_workspace(workspace)
    try:
        app = build_server(workspace, store)
        serving = anyio.CancelScope()
        web = None if port is None else _web(app, host, port, secret)
        stop = serving.cancel if web is None else lambda: setattr(web, "should_exit", True)
        async with _working(workspace, worker), anyio.create_task_group() as tg:
            tg.start_soon(_on_signal, stop)
            with serving:
                if web is None:
                    log.info("mcp_serving", transport="stdio")
                    await app.run_stdio_async()
                else:
                    await _http(web)
            tg.cancel_scope.cancel()
    finally:
        store.close()
