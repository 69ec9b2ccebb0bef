"""web_fetch: SSRF guard, redirects, size and time limits, HTML to text. All offline."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest
import respx

from harness.settings import Settings
from harness.tools import ToolContext, ToolRegistry, default_registry
from harness.tools.webfetch import Resolver, blocked_reason, html_to_text, make_web_fetch_tool

pytestmark = pytest.mark.anyio

PUBLIC = "93.184.216.34"
PUBLIC6 = "2606:2800:220:1:248:1893:25c8:1946"
DNS = {
    "example.com": [PUBLIC],
    "v6.example": [PUBLIC6],
    "localhost": ["127.0.0.1", "::1"],
    "intranet.example": ["10.0.0.5"],
    "mixed.example": [PUBLIC, "192.168.1.1"],
    "metadata.example": ["169.254.169.254"],
}


def fake_resolver(table: dict[str, list[str]]) -> tuple[Resolver, list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve, asked


class NoNotes:
    async def append_note(self, agent: str, text: str) -> int:
        return 0

    async def search_notes(
        self, agent: str, query: str, limit: int = 10
    ) -> list[tuple[int, str, datetime]]:
        return []

    async def read_notes(self, agent: str, limit: int = 20) -> list[tuple[int, str, datetime]]:
        return []


def make_ctx(tmp_path: Path, **web_fetch: object) -> ToolContext:
    settings = Settings.model_validate({"tools": {"web_fetch": web_fetch}})
    return ToolContext(1, 1, "veblen", tmp_path / "run", settings, NoNotes())


async def fetch(
    url: str,
    ctx: ToolContext,
    *,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[bool, str]:
    resolve = resolver or fake_resolver(DNS)[0]
    reg = ToolRegistry([make_web_fetch_tool(resolver=resolve, transport=transport)])
    args = json.dumps({"url": url})
    result = await reg.call("web_fetch", args, ctx, allowed={"web_fetch"}, max_chars=100_000)
    return result.ok, result.content


PAGE = b"""<!DOCTYPE html>
<html><head><title>  The   Page </title>
<style>body { color: red }</style>
<script>var secret = "do not show";</script></head>
<body><h1>Heading</h1><p>First   paragraph
with &amp; entity.</p><ul><li>one</li><li>two</li></ul>
<noscript>enable js</noscript><svg><text>svg text</text></svg>
<table><tr><td>a</td><td>b</td></tr></table></body></html>"""


# ---------------------------------------------------------------------------- fetching


@respx.mock
async def test_fetches_html_pinned_to_the_checked_address(tmp_path: Path) -> None:
    route = respx.get(f"http://{PUBLIC}/page?q=1").respond(
        200, headers={"content-type": "text/html; charset=utf-8"}, content=PAGE
    )
    ok, out = await fetch("http://example.com/page?q=1", make_ctx(tmp_path))
    assert ok, out
    assert route.calls.last.request.headers["host"] == "example.com"
    assert out.startswith("URL: http://example.com/page?q=1\nTitle: The Page\n\n")
    assert "# Heading" in out and "First paragraph with & entity." in out
    assert "- one\n- two" in out and "a b" in out
    for hidden in ("color: red", "do not show", "enable js", "svg text"):
        assert hidden not in out


@respx.mock
async def test_https_keeps_the_name_for_tls(tmp_path: Path) -> None:
    route = respx.get(f"https://{PUBLIC}:8443/").respond(200, text="plain body")
    ok, out = await fetch("https://example.com:8443/", make_ctx(tmp_path))
    assert ok and out.endswith("\n\nplain body")
    request = route.calls.last.request
    assert request.headers["host"] == "example.com:8443"
    assert request.extensions["sni_hostname"] == "example.com"


@respx.mock
async def test_ipv6_public_address(tmp_path: Path) -> None:
    respx.get(f"http://[{PUBLIC6}]/").respond(200, json={"a": 1})
    ok, out = await fetch("http://v6.example/", make_ctx(tmp_path))
    assert ok and out.endswith('\n\n{"a":1}')


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://localhost:8080/admin", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://intranet.example/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://metadata.example/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback (embedded in IPv6)"),
        ("http://[::ffff:10.0.0.1]/", "private (embedded in IPv6)"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00::1]/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://100.64.0.1/", "not globally routable"),
        ("http://mixed.example/", "private"),
    ],
)
@respx.mock
async def test_private_addresses_are_refused(tmp_path: Path, url: str, reason: str) -> None:
    catch_all = respx.route().respond(200, text="should not be reached")
    ok, out = await fetch(url, make_ctx(tmp_path))
    assert not ok
    assert "refusing to fetch" in out and f"is a {reason} address" in out, out
    assert not catch_all.called


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/", "data:,hi"]
)
async def test_other_schemes_are_refused(tmp_path: Path, url: str) -> None:
    ok, out = await fetch(url, make_ctx(tmp_path))
    assert not ok and "only http and https" in out


async def test_bad_urls(tmp_path: Path) -> None:
    ok, out = await fetch("not a url", make_ctx(tmp_path))
    assert not ok and ("only http and https" in out or "not a valid URL" in out)
    ok, out = await fetch("http://nowhere.invalid/", make_ctx(tmp_path))
    assert not ok and "cannot resolve host 'nowhere.invalid'" in out


@respx.mock
async def test_redirect_to_a_private_address_is_refused(tmp_path: Path) -> None:
    respx.get(f"http://{PUBLIC}/go").respond(302, headers={"location": "http://localhost/admin"})
    secret = respx.get("http://127.0.0.1/admin").respond(200, text="admin panel")
    ok, out = await fetch("http://example.com/go", make_ctx(tmp_path))
    assert not ok and "localhost (127.0.0.1) is a loopback address" in out
    assert not secret.called


@respx.mock
async def test_relative_redirects_are_followed_and_rechecked(tmp_path: Path) -> None:
    respx.get(f"http://{PUBLIC}/a").respond(301, headers={"location": "/b"})
    respx.get(f"http://{PUBLIC}/b").respond(307, headers={"location": "https://v6.example/c"})
    respx.get(f"https://[{PUBLIC6}]/c").respond(200, text="landed")
    resolve, asked = fake_resolver(DNS)
    ok, out = await fetch("http://example.com/a", make_ctx(tmp_path), resolver=resolve)
    assert ok and out == "URL: https://v6.example/c\n\nlanded"
    assert asked == ["example.com", "example.com", "v6.example"]


@respx.mock
async def test_too_many_redirects(tmp_path: Path) -> None:
    route = respx.get(f"http://{PUBLIC}/loop").respond(302, headers={"location": "/loop"})
    ok, out = await fetch("http://example.com/loop", make_ctx(tmp_path))
    assert not ok and "too many redirects" in out
    assert route.call_count == 6  # the first request and five redirects


@respx.mock
async def test_allow_private(tmp_path: Path) -> None:
    respx.get("http://localhost:8080/x").respond(200, text="local ok")

    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("no resolution when private addresses are allowed")

    ok, out = await fetch(
        "http://localhost:8080/x", make_ctx(tmp_path, allow_private=True), resolver=no_dns
    )
    assert ok and out.endswith("local ok")


async def test_body_is_streamed_and_capped(tmp_path: Path) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"x" * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/plain"}, content=body())

    ok, out = await fetch(
        "http://example.com/big",
        make_ctx(tmp_path, max_bytes=3000),
        transport=httpx.MockTransport(handler),
    )
    assert ok
    header, text = out.split("\n\n", 1)
    assert "[only the first 3000 bytes were read]" in header
    assert text == "x" * 3000
    assert sent < 10  # stopped reading, did not download the megabyte


async def test_body_exactly_at_the_cap_is_not_truncated(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text="y" * 100))
    ok, out = await fetch(
        "http://example.com/", make_ctx(tmp_path, max_bytes=100), transport=transport
    )
    assert ok and "only the first" not in out and out.endswith("y" * 100)


async def test_timeout(tmp_path: Path) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(5)
        return httpx.Response(200, text="late")

    with anyio.fail_after(3):
        ok, out = await fetch(
            "http://example.com/slow",
            make_ctx(tmp_path, timeout_s=0.1),
            transport=httpx.MockTransport(slow),
        )
    assert not ok and "timed out after 0.1s" in out


@respx.mock
async def test_binary_and_errors(tmp_path: Path) -> None:
    respx.get(f"http://{PUBLIC}/img").respond(
        200, headers={"content-type": "image/png"}, content=b"\x89PNG"
    )
    respx.get(f"http://{PUBLIC}/raw").respond(200, content=b"\x00\x01\x02binary")
    respx.get(f"http://{PUBLIC}/gone").respond(404)
    ctx = make_ctx(tmp_path)
    ok, out = await fetch("http://example.com/img", ctx)
    assert not ok and "binary content (image/png)" in out
    ok, out = await fetch("http://example.com/raw", ctx)
    assert not ok and "looks like binary" in out
    ok, out = await fetch("http://example.com/gone", ctx)
    assert not ok and "HTTP 404 Not Found for http://example.com/gone" in out


@respx.mock
async def test_charsets(tmp_path: Path) -> None:
    respx.get(f"http://{PUBLIC}/latin").respond(
        200,
        headers={"content-type": "text/plain; charset=iso-8859-1"},
        content="café".encode("latin-1"),
    )
    html = '<html><head><meta charset="windows-1252"><title>r\xe9sum\xe9</title></head></html>'
    respx.get(f"http://{PUBLIC}/meta").respond(
        200, headers={"content-type": "text/html"}, content=html.encode("cp1252")
    )
    respx.get(f"http://{PUBLIC}/sniff").respond(200, content=b"  <!DOCTYPE html><p>sniffed</p>")
    ctx = make_ctx(tmp_path)
    assert (await fetch("http://example.com/latin", ctx))[1].endswith("café")
    assert "Title: résumé" in (await fetch("http://example.com/meta", ctx))[1]
    assert (await fetch("http://example.com/sniff", ctx))[1].endswith("\n\nsniffed")


async def test_default_registry_refuses_loopback_without_network(tmp_path: Path) -> None:
    reg = default_registry()
    result = await reg.call(
        "web_fetch", '{"url": "http://127.0.0.1:9/"}', make_ctx(tmp_path),
        allowed={"web_fetch"}, max_chars=1000,
    )  # fmt: skip
    assert not result.ok and "loopback" in result.content


# ------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        (PUBLIC6, None),
        ("127.0.0.2", "loopback"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("::ffff:8.8.8.8", None),
        ("::ffff:169.254.1.1", "link-local (embedded in IPv6)"),
        ("2002:c0a8:0101::1", "private (embedded in IPv6)"),  # 6to4 of 192.168.1.1
        ("example.com", "not an IP address"),
    ],
)
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert blocked_reason(address) == reason


def test_html_to_text() -> None:
    title, text = html_to_text(PAGE.decode())
    assert title == "The Page"
    assert text == "# Heading\n\nFirst paragraph with & entity.\n\n- one\n- two\n\na b"
    assert html_to_text("<p>a<svg>never closed<p>b")[1] == "a"
    assert html_to_text("<body><svg>x</body><p>after</p>")[1] == "after"
    assert html_to_text("no tags at all") == (None, "no tags at all")
    assert html_to_text("line<br>break")[1] == "line\nbreak"
    assert html_to_text("<pre>a\n  b</pre>")[1] == "a\nb"  # lines kept, indentation not
