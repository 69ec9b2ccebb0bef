"""What goes in and out of an MCP server: transports, its stderr log, its secrets.

:func:`watched` wraps an SDK transport so that the end of what the server sends (its process
exited, the HTTP session ended) is reported at once, not at the next call; :func:`http` is
streamable HTTP with headers, timeouts and the HTTP error statuses heard. A stdio server's
stderr goes to a log (:func:`open_log`, one previous generation kept). :class:`Secrets` holds
the values of the ``env`` and ``headers_env`` variables a server was given: they are
registered with :func:`harness.logs.add_secret` (never logged) and cut out of any text a
server sends back (never in a transcript or the database).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

import anyio
import httpx2
from mcp.client import Transport
from mcp.client.streamable_http import streamable_http_client

from .. import logs, scrub

__all__ = ["REDACTED", "Secrets", "http", "last_line", "log_size", "open_log", "watched"]

REDACTED = scrub.REDACTED
LOG_ROTATE_BYTES = 10_000_000


class Secrets:
    """Values never shown: the longest first, so one that contains another goes whole."""

    def __init__(self) -> None:
        self._values: list[str] = []

    def add(self, value: str) -> str:
        """Remember ``value`` (and never log it); returns it unchanged."""
        logs.add_secret(value)
        if len(value) >= 4 and value not in self._values:
            self._values = sorted([*self._values, value], key=len, reverse=True)
        return value

    def redact(self, text: str) -> str:
        """``text`` without this server's values (however short) nor any other known secret."""
        return scrub.redact(text, also=self._values)


class _Watched:
    """A read stream that calls ``on_end`` once when the stream ends or breaks."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end: Callable[[], None] | None = on_end

    def __getattr__(self, name: str) -> Any:  # e.g. ``last_context`` of the HTTP transport
        return getattr(self._inner, name)

    def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended()
            raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def watched(transport: Transport, on_end: Callable[[], None]) -> AsyncIterator[Any]:
    """``transport`` whose read side calls ``on_end`` when the server stops sending."""
    async with transport as (read, write):
        yield _Watched(read, on_end), write


def log_size(path: Path) -> int:
    """The size of a log in bytes (0 when there is none)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def open_log(path: Path) -> TextIO:
    """Open a server's stderr log for appending; keep one previous generation once large."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    return path.open("a", encoding="utf-8")


def last_line(path: Path, since: int = 0) -> str:
    """The last non-empty line written to ``path`` after its first ``since`` bytes."""
    size = log_size(path)
    try:
        with path.open("rb") as f:
            f.seek(max(since if since <= size else 0, size - 2000))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


@asynccontextmanager
async def http(
    url: str,
    headers: dict[str, str],
    timeouts: tuple[float, float],
    on_refused: Callable[[str], None],
) -> AsyncIterator[Any]:
    """Streamable HTTP with ``headers``; ``on_refused`` hears of each HTTP error status (the
    SDK reports only "Server returned an error response")."""

    async def seen(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            on_refused(f"HTTP {response.status_code} {response.reason_phrase}")

    connect_s, read_s = timeouts
    timeout = httpx2.Timeout(connect_s, read=read_s + 5.0)  # the call's own timeout comes first
    hooks = {"response": [seen]}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks=hooks) as client,
        streamable_http_client(url, http_client=client) as streams,
    ):
        yield streams
