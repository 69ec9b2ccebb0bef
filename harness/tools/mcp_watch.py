"""Small pieces of the MCP client: noticing that a server's output ended, and its secrets.

:func:`watched` wraps an SDK transport so that the end of what the server sends (its process
exited, the HTTP session ended) is reported at once, not at the next call. :class:`Secrets`
holds the values of the ``env`` and ``headers_env`` variables a server was given: they are
registered with :func:`harness.logs.add_secret` (never logged) and cut out of any text a
server sends back (never in a transcript or the database).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
from mcp.client import Transport

from .. import logs

__all__ = ["REDACTED", "Secrets", "watched"]

REDACTED = "[redacted]"


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
        for value in self._values:
            text = text.replace(value, REDACTED)
        return text


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
