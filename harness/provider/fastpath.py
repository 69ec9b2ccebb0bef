"""The direct aiohttp POST: a non-streamed call on our own ``httpx_aiohttp`` transport goes
straight to its aiohttp session, without httpx's request and response stream wrappers.

A call is one POST, so the hot path skips what ``AsyncClient.build_request`` and
``AsyncClient.send`` redo on every request (URL and header merging, auth flow, redirects,
cookies, event hooks; an API call uses none of them). Measured in docs/benchmarks.md (B1).

It rests on internals of httpx and httpx-aiohttp, all named in :data:`INTERNALS`:
:func:`missing_internals` lists those that are gone (a test fails loudly on any), and the
transport uses the public httpx path instead whenever one is missing, so an upgrade can make
calls slower, never wrong.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import httpx_aiohttp
import httpx_aiohttp.transport

__all__ = ["INTERNALS", "AiohttpDirect", "RawAnswer", "missing_internals", "transport_for"]

#: (owner, attribute) pairs this module relies on.
INTERNALS = (
    ("httpx.AsyncClient", "_transport_for_url"),
    ("httpx_aiohttp.AiohttpTransport", "client"),
    ("httpx_aiohttp.AiohttpTransport", "get_client"),
    ("httpx_aiohttp.AiohttpTransport", "proxy"),
    ("httpx_aiohttp.transport", "map_aiohttp_exceptions"),
)


_OWNERS: dict[str, Any] = {
    "httpx.AsyncClient": httpx.AsyncClient,
    "httpx_aiohttp.AiohttpTransport": httpx_aiohttp.AiohttpTransport,
    "httpx_aiohttp.transport": httpx_aiohttp.transport,
}


def missing_internals() -> list[str]:
    """The internals of :data:`INTERNALS` that this httpx / httpx-aiohttp no longer has
    (``client`` and ``proxy`` are set per transport, so a fresh one is asked). Found once
    per process: each provider's first call waits for the answer."""
    return list(_missing())


@functools.cache
def _missing() -> tuple[str, ...]:
    # a context without CAs: the default one loads the CA bundle (~30 ms) for nothing
    sample = httpx_aiohttp.AiohttpTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    missing = []
    for owner, name in INTERNALS:
        target = _OWNERS[owner]
        if target is httpx_aiohttp.AiohttpTransport and name in ("client", "proxy"):
            target = sample
        if not hasattr(target, name):
            missing.append(f"{owner}.{name}")
    return tuple(missing)


def transport_for(client: httpx.AsyncClient, url: httpx.URL) -> httpx.AsyncBaseTransport | None:
    """The transport ``client`` would use for ``url`` (proxy mounts honoured), or None when
    httpx no longer exposes it (callers then send through the public API)."""
    pick = getattr(client, "_transport_for_url", None)
    return pick(url) if pick is not None else None


@dataclass(frozen=True)
class RawAnswer:
    """A whole (decoded) response body with its status and headers."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class AiohttpDirect:
    """POSTs on the aiohttp session of one ``httpx_aiohttp`` transport, with the options and
    error mapping of its ``handle_async_request``. aiohttp decodes the body (gzip and deflate
    are all this path asks for) and enforces ``timeout_s`` (``total``: a ``TimeoutError``,
    like ``anyio.fail_after`` on the public path, at less cost)."""

    def __init__(
        self,
        transport: Any,
        url: httpx.URL,
        headers: httpx.Headers,
        *,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        if not isinstance(transport.client, aiohttp.ClientSession):
            transport.client = transport.get_client()
        self.transport = transport
        self._session = transport.client
        self._url = str(url)
        sent = httpx.Headers(headers)
        sent["accept-encoding"] = "gzip, deflate"  # what aiohttp always decodes
        proxy = transport.proxy
        self._options: dict[str, Any] = {
            "headers": list(sent.multi_items()),
            "allow_redirects": False,
            "compress": False,
            "timeout": aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s),
            "proxy": str(proxy.url) if proxy else None,
        }

    async def post(self, body: bytes) -> RawAnswer:
        """One POST; aiohttp's errors come out as httpx's (only a failed call pays for the
        mapping)."""
        try:
            async with self._session.request("POST", self._url, data=body, **self._options) as r:
                content = await r.read()
        except Exception:
            with httpx_aiohttp.transport.map_aiohttp_exceptions():
                raise
        return RawAnswer(r.status, r.headers, content)
