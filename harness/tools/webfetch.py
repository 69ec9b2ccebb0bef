"""``web_fetch``: GET a public web page and return its readable text, guarded against SSRF.

Contract:

- only ``http``/``https``; at most ``MAX_REDIRECTS`` redirects, followed by hand so that every hop
  is checked again;
- unless ``allow_private``, the host is resolved first and refused when *any* of its addresses is
  loopback, private, link-local, multicast, reserved, unspecified or otherwise not global (IPv4 and
  IPv6, IPv4-mapped and 6to4 IPv6 included); the connection then goes to the checked address
  (the URL's host is kept for ``Host`` and TLS SNI/verification), so a DNS answer that changes
  between check and connect cannot smuggle a private address in. Environment proxies are not used,
  for the same reason;
- the body is streamed and reading stops at ``max_bytes`` (the result says it was truncated); the
  whole fetch, redirects included, must finish within ``timeout_s``;
- HTML becomes readable text (title kept, scripts and styles dropped, whitespace collapsed);
  other text comes back as is; binary content is refused.

Every failure raises :class:`~harness.errors.ToolError` with a sentence the model can act on.
The resolver and the HTTP transport are injectable for tests.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Literal

import anyio
import httpx

from ..errors import ToolError
from ..settings import WebFetchConfig
from .base import Tool, ToolContext, make_tool

__all__ = [
    "MAX_REDIRECTS",
    "Page",
    "Resolver",
    "WebFetcher",
    "blocked_reason",
    "html_to_text",
    "make_web_fetch_tool",
    "system_resolver",
]

MAX_REDIRECTS = 5
USER_AGENT = "harness-web-fetch/0.1"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

#: ``(host, port) -> addresses`` as strings; raises OSError when the name does not resolve.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system's resolver (off the event loop)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def blocked_reason(address: str) -> str | None:
    """Why ``address`` must not be fetched from (e.g. ``"loopback"``), or None if it is public."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            reason = blocked_reason(str(embedded))
            return f"{reason} (embedded in IPv6)" if reason else None
    for label, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return label
    if not ip.is_global:
        return "not globally routable"
    return None


# ------------------------------------------------------------------------- HTML to text

_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "canvas", "iframe", "object"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "header", "hr", "main", "nav", "ol", "p",
        "section", "table", "tr", "ul", "body", "caption",
    }
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_SPACES = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skip = 0
        self._pre = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "pre":
            self._pre += 1
            self.parts.append("\n")
        elif tag in _HEADINGS:
            self.parts.append("\n\n" + "#" * _HEADINGS[tag] + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "br":
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag in _BLOCK:
            self.parts.append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(self._skip - 1, 0)
        elif tag in ("body", "html"):
            self._skip = 0  # an unclosed <svg> must not swallow the rest
        elif tag == "title":
            self._in_title = False
        elif tag == "pre":
            self._pre = max(self._pre - 1, 0)
            self.parts.append("\n")
        elif tag in _BLOCK or tag in _HEADINGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if not self._pre:  # outside <pre>, a line break in the source is just a space
            data = _SPACES.sub(" ", data)
        (self.title_parts if self._in_title else self.parts).append(data)


def _tidy(text: str) -> str:
    """Collapse runs of whitespace inside lines and keep at most one blank line in a row."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def html_to_text(html: str) -> tuple[str | None, str]:
    """``(title, readable text)`` of an HTML document."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title_parts).split()) or None
    return title, _tidy("".join(parser.parts))


# ------------------------------------------------------------------------------ fetching

Kind = Literal["html", "text", "binary", "unknown"]
_TEXT_APPLICATION = frozenset(
    {
        "application/json", "application/xml", "application/javascript", "application/ecmascript",
        "application/x-javascript", "application/yaml", "application/x-yaml", "application/toml",
        "application/csv", "application/x-ndjson", "application/sql", "application/x-sh",
    }
)  # fmt: skip
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _kind(content_type: str) -> Kind:
    mime = content_type.split(";", 1)[0].strip().lower()
    if not mime:
        return "unknown"
    if mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if mime.startswith("text/") or mime in _TEXT_APPLICATION or mime.endswith(("+json", "+xml")):
        return "text"
    return "binary"


def _sniff(body: bytes) -> Kind:
    head = body[:2048]
    if b"\x00" in head:
        return "binary"
    start = head.lstrip()[:15].lower()
    return "html" if start.startswith((b"<!doctype html", b"<html")) else "text"


def _decode(body: bytes, charset: str | None, kind: Kind) -> str:
    if not charset and kind == "html":
        match = _META_CHARSET.search(body[:4096])
        charset = match.group(1).decode("ascii") if match else None
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Page:
    """A fetched page: its final URL (after redirects) and its text."""

    url: str
    status: int
    content_type: str
    title: str | None
    text: str
    truncated: bool

    def render(self, max_bytes: int) -> str:
        """The page as the model reads it: a short header, a blank line, the text."""
        head = [f"URL: {self.url}"]
        if self.title:
            head.append(f"Title: {self.title}")
        if self.truncated:
            head.append(f"[only the first {max_bytes} bytes were read]")
        return "\n".join(head) + "\n\n" + (self.text or "(no text content)")


class WebFetcher:
    """Fetches one URL at a time under a :class:`~harness.settings.WebFetchConfig`."""

    def __init__(
        self,
        config: WebFetchConfig,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.transport = transport

    async def fetch(self, url: str) -> Page:
        """GET ``url`` following up to ``MAX_REDIRECTS`` redirects; raises ToolError on failure."""
        timeout = self.config.timeout_s
        try:
            with anyio.fail_after(timeout):
                async with httpx.AsyncClient(
                    transport=self.transport,
                    timeout=httpx.Timeout(timeout),
                    follow_redirects=False,
                    trust_env=False,
                    headers={
                        "User-Agent": USER_AGENT,
                        "Accept": "text/html, text/*;q=0.9, */*;q=0.5",
                    },
                ) as client:
                    return await self._follow(client, url)
        except TimeoutError:
            raise ToolError(f"fetching {url} timed out after {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc

    async def _follow(self, client: httpx.AsyncClient, url: str) -> Page:
        current = _parse(url)
        for _ in range(MAX_REDIRECTS + 1):
            request = await self._request(client, current)
            response = await client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_CODES and location:
                    current = _parse(str(current.join(location)))
                    continue
                return await self._read(response, current)
            finally:
                await response.aclose()
        raise ToolError(f"too many redirects (more than {MAX_REDIRECTS}) starting at {url}")

    async def _request(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Request:
        """A GET for ``url``, pinned to a checked address unless private ones are allowed."""
        if self.config.allow_private:
            return client.build_request("GET", url)
        host = url.raw_host.decode("ascii")  # IDNA-encoded: what DNS and TLS see
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise ToolError(f"cannot resolve host {host!r}: {exc}") from exc
        if not addresses:
            raise ToolError(f"cannot resolve host {host!r}: no addresses")
        for address in addresses:
            reason = blocked_reason(address)
            if reason:
                shown = host if host == address else f"{host} ({address})"
                raise ToolError(
                    f"refusing to fetch {url}: {shown} is a {reason} address; "
                    "only public internet addresses may be fetched"
                )
        host_header = url.netloc.decode("ascii").rpartition("@")[2]
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return client.build_request(
            "GET",
            url.copy_with(host=addresses[0]),
            headers={"Host": host_header},
            extensions=extensions,
        )

    async def _read(self, response: httpx.Response, url: httpx.URL) -> Page:
        status = response.status_code
        if status >= 400:
            raise ToolError(f"HTTP {status} {response.reason_phrase} for {url}")
        content_type = response.headers.get("content-type", "")
        kind = _kind(content_type)
        if kind == "binary":
            raise ToolError(f"{url} is binary content ({content_type}); only text can be fetched")
        limit = self.config.max_bytes
        chunks: list[bytes] = []
        size, truncated = 0, False
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # one chunk past the cap tells "more" from "exactly the cap"
                truncated = True
                break
        body = b"".join(chunks)[:limit]
        if kind == "unknown":
            kind = _sniff(body)
            if kind == "binary":
                raise ToolError(f"{url} looks like binary content; only text can be fetched")
        text = _decode(body, response.charset_encoding, kind)
        title = None
        if kind == "html":
            title, text = html_to_text(text)
        return Page(str(url), status, content_type, title, text, truncated)


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ToolError(f"not a valid URL: {url!r} ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise ToolError(f"refusing {url!r}: only http and https URLs can be fetched")
    if not parsed.host:
        raise ToolError(f"not a valid URL: {url!r} has no host")
    return parsed


def make_web_fetch_tool(
    *, resolver: Resolver = system_resolver, transport: httpx.AsyncBaseTransport | None = None
) -> Tool:
    """The ``web_fetch`` tool; tests pass a fake resolver and/or transport."""

    async def web_fetch(url: str, ctx: ToolContext) -> str:
        """Fetch a public web page (http or https) and return its readable text.

        Args:
            url: The absolute URL to fetch, e.g. https://example.com/page.
        """
        config = ctx.settings.tools.web_fetch
        fetcher = WebFetcher(config, resolver=resolver, transport=transport)
        page = await fetcher.fetch(url)
        return page.render(config.max_bytes)

    return make_tool(web_fetch)
