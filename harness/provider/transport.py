"""One provider's HTTP side: a pooled client, a concurrency limiter, pacing, and one attempt.

:class:`ProviderClient` sends one ``POST /chat/completions`` and turns the outcome into a
:class:`Reply` or an :class:`AttemptError`. It owns the provider's pacing (its
:class:`~.pacing.Pacer`): every send waits its turn, gives back the tokens it did not use, and
a 429 (or any ``Retry-After``) pauses every call to the provider. It never retries: retry and
fallback decisions live in :mod:`.openai` (one place), which reads
``AttemptError.retryable`` and ``retry_after``.

What counts as *reaching the server* (and so earns a call record): an HTTP response, or a
request that timed out waiting for one (the server may be working on it and billing it).
Connection failures before any response (refused, reset, a stale keep-alive connection the
server had already closed) did not reach it.

Deadlines are ours (anyio), not the HTTP library's: a non-streaming call must finish within
``timeout_s``; a stream must send its headers within ``timeout_s`` and then some bytes at
least every ``stream_idle_timeout_s``, with no overall limit while it makes progress.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import httpx
import structlog
from httpx_aiohttp import AiohttpTransport

from .. import scrub
from ..messages import ChatMessage, WireUsage
from ..settings import ProviderConfig
from ..usage import Usage
from .fastpath import AiohttpDirect, missing_internals, transport_for
from .pacing import Clock, Pacer, Sleep, backoff_delay, parse_retry_after
from .wire import BODY_CHARS, FormatProblem, StreamAssembler, parse_completion

TransportFactory = Callable[[str, ProviderConfig], httpx.AsyncBaseTransport]
ErrorKind = Literal["http", "format", "connect", "timeout", "stream"]

CHAT_PATH = "/chat/completions"
RETRYABLE_STATUS = frozenset({408, 409, 429})
# request bodies as httpx writes them; built once (json.dumps with options builds one a call)
_BODY = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

log = structlog.get_logger("harness.provider")


class AttemptError(Exception):
    """One attempt failed; carries what a retry decision and a call record need.

    The message and ``body`` never contain the provider's API key (redacted).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        retryable: bool,
        status: int | None = None,
        body: str | None = None,
        retry_after: float | None = None,
        reached_server: bool = True,
        ttft_ms: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.reached_server = reached_server
        self.ttft_ms = ttft_ms
        self.latency_ms = 0.0
        self.delay_s: float | None = None  # set by the retry policy: wait before the next try
        self.usage: Usage | None = None  # tokens the server spent on a reply we rejected


@dataclass(frozen=True)
class Reply:
    """A successful attempt: the assistant message and what the server said about it."""

    message: ChatMessage
    finish_reason: str | None
    usage: WireUsage | None
    status: int
    latency_ms: float
    ttft_ms: float | None = None


class Answer(Protocol):
    """What the status check and the body parser read of a response: an ``httpx.Response``,
    or the lighter :class:`RawAnswer` of the direct aiohttp path."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...


UNLIMITED_POOL = 256  # connections kept for a provider without max_concurrency


def default_transport(config: ProviderConfig) -> httpx.AsyncBaseTransport:
    """The configured transport, its keep-alive pool sized to ``max_concurrency``."""
    size = config.max_concurrency or UNLIMITED_POOL
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    tls: dict[str, Any] = {}
    if config.base_url.startswith("http://"):
        # plain HTTP (e.g. a local model server) never uses TLS: skip loading the CA bundle
        # (tens of ms before the first call); a context without CAs fails closed if used
        tls["verify"] = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.transport == "aiohttp":
        return AiohttpTransport(limits=limits, **tls)
    return httpx.AsyncHTTPTransport(limits=limits, retries=0, **tls)


def plain_http_text(text: str, base_url: str) -> str:
    """An error's text without the SSL context aiohttp names (`` ssl:default``) for any URL,
    when ``base_url`` is plain HTTP."""
    return re.sub(r" ssl:\S+", "", text) if base_url.startswith("http://") else text


def status_retryable(status: int) -> bool:
    """408, 409, 429 and 5xx are worth retrying; any other status is final."""
    return status in RETRYABLE_STATUS or status >= 500


class ProviderClient:
    """Everything shared by the calls to one provider. Built lazily inside the event loop."""

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        transport_factory: TransportFactory | None,
        sleep: Sleep,
        clock: Clock,
        secrets: set[str] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._factory = transport_factory
        self._clock = clock
        self.pacer = Pacer(
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            sleep=sleep,
            clock=clock,
        )
        self._client: httpx.AsyncClient | None = None
        self._url: httpx.URL | None = None  # the chat URL, merged with base_url once
        self._post_headers: httpx.Headers | None = None
        self._extensions: dict[str, Any] = {}
        self._direct: AiohttpDirect | None = None  # the direct aiohttp path, when in use
        self._throttled = 0  # 429s in a row: the provider-wide pause grows with them
        self._limiter: anyio.Semaphore | None = None
        # one registry for every provider (a server may echo any of our keys back), and
        # for everything else harness stores or prints
        for secret in secrets or ():
            scrub.add_secret(secret)

    # -- setup -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"user-agent": "harness", **self.config.headers}
        for value in self.config.headers.values():  # any header may be echoed in an error
            scrub.add_secret(value)
        key = self.config.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
            scrub.add_secret(key)
        return headers

    def http_client(self) -> httpx.AsyncClient:
        """The provider's pooled client (made on first use, inside the event loop), with its
        headers and key: what the calls go through, and the preflight probe too (its
        connection is then the first call's)."""
        return self._http()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = (
                self._factory(self.name, self.config)
                if self._factory
                else default_transport(self.config)
            )
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url,
                headers=self._headers(),
                transport=transport,
                # an injected transport is used for every URL, whatever *_PROXY says
                trust_env=self._factory is None,
                # connect/write backstops only; read deadlines are enforced with anyio
                timeout=httpx.Timeout(
                    connect=self.config.connect_timeout_s,
                    read=None,
                    write=self.config.timeout_s,
                    pool=None,
                ),
            )
            template = self._client.build_request("POST", CHAT_PATH, json={})
            self._url = template.url
            self._post_headers = httpx.Headers(self._client.headers)
            self._post_headers["content-type"] = "application/json"
            self._extensions = dict(template.extensions)  # the client's timeouts
            if self._factory is None and self.config.transport == "aiohttp":
                self._direct = self._direct_path(transport)
        return self._client

    def _direct_path(self, transport: httpx.AsyncBaseTransport) -> AiohttpDirect | None:
        missing = missing_internals()
        if missing:  # slower, never wrong: the public httpx path
            log.warning("aiohttp_fast_path_off", provider=self.name, missing=missing)
            return None
        assert self._url is not None and self._post_headers is not None
        return AiohttpDirect(
            transport,
            self._url,
            self._post_headers,
            timeout_s=self.config.timeout_s,
            connect_timeout_s=self.config.connect_timeout_s,
        )

    # The hot path. A call is one POST, so it skips what ``AsyncClient.build_request`` and
    # ``AsyncClient.send`` redo on every request (see :mod:`.fastpath`). The request goes to
    # the transport the client picks for the URL, so proxy mounts (and respx, in tests) still
    # apply; when that is our own aiohttp transport, a non-streamed call goes straight to its
    # aiohttp session.

    def _body(self, payload: dict[str, Any]) -> bytes:
        """``payload`` as JSON, encoded as httpx encodes it."""
        return _BODY.encode(payload).encode("utf-8")

    async def _exchange(
        self, client: httpx.AsyncClient, payload: dict[str, Any], *, stream: bool
    ) -> Any:
        """Send the POST and return the response (its body read unless ``stream``): an
        ``httpx.Response``, or a :class:`RawAnswer` from the direct aiohttp path."""
        assert self._url is not None
        body = self._body(payload)
        transport = transport_for(client, self._url)
        direct = self._direct
        if direct is not None and transport is direct.transport and not stream:
            return await direct.post(body)  # with its own deadline
        with anyio.fail_after(self.config.timeout_s):
            return await self._send(client, transport, body, stream=stream)

    async def _send(
        self,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport | None,
        body: bytes,
        *,
        stream: bool,
    ) -> httpx.Response:
        assert self._url is not None
        request = httpx.Request(
            "POST", self._url, headers=self._post_headers, content=body, extensions=self._extensions
        )
        if transport is None:  # an httpx without ``_transport_for_url``: the public path
            return await client.send(request, stream=stream)
        response = await transport.handle_async_request(request)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    def limiter(self) -> anyio.Semaphore:
        """At most ``max_concurrency`` calls in flight; the rest queue here, not in the pool.
        Without one, as many as the callers (the worker's slots) send."""
        if self._limiter is None:
            self._limiter = anyio.Semaphore(self.config.max_concurrency or UNLIMITED_POOL)
        return self._limiter

    def redact(self, text: str) -> str:
        """``text`` with every known secret (of any provider, see :mod:`harness.scrub`)
        replaced by ``[redacted]``."""
        return scrub.redact(text)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._url = self._post_headers = self._direct = None
            await client.aclose()

    # -- one attempt -------------------------------------------------------------------

    async def send(
        self,
        payload: dict[str, Any],
        *,
        stream: bool,
        tokens: int,
        on_send: Callable[[], None] | None = None,
    ) -> Reply:
        """Send one request once, after its turn (``tokens``: its worst case, for the
        tokens-per-minute budget), and return the reply, or raise AttemptError. ``on_send``
        is called when the request leaves (after pacing and the concurrency limit)."""
        await self.pacer.wait_turn(tokens)
        limiter = self.limiter()
        try:  # a free slot is taken without a trip through the event loop (the common case)
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            await self.pacer.wait_paused()
            if on_send is not None:
                on_send()
            started = self._clock()
            try:
                if stream:
                    reply = await self._stream(payload, started)
                else:
                    reply = await self._post(payload, started)
            except AttemptError as exc:
                exc.latency_ms = self._ms(started)
                self._paced_failure(exc, tokens)
                raise
        finally:
            limiter.release()
        self._paced_success(reply, tokens)
        return reply

    def _paced_success(self, reply: Reply, tokens: int) -> None:
        self._throttled = 0
        usage = reply.usage
        used = tokens
        if usage is not None and usage.prompt_tokens is not None:
            used = usage.prompt_tokens + (usage.completion_tokens or 0)
        self.pacer.settle(tokens, used)

    def _paced_failure(self, exc: AttemptError, tokens: int) -> None:
        """Give the attempt's tokens back; on a 429 (or any ``Retry-After``) hold every call to
        this provider until the server's instant, else a backoff that grows with 429s in a
        row, and tell the caller to wait the same (``exc.delay_s``)."""
        self.pacer.settle(tokens, 0)
        if exc.status != 429 and exc.retry_after is None:
            return
        self._throttled += 1
        wait = exc.retry_after
        if wait is None:
            wait = backoff_delay(
                self._throttled, self.config.backoff_base_s, self.config.backoff_max_s
            )
        exc.delay_s = wait
        self.pacer.pause_until(self._clock() + wait)

    def _ms(self, started: float) -> float:
        return max(self._clock() - started, 0.0) * 1000.0

    async def _post(self, payload: dict[str, Any], started: float) -> Reply:
        client = self._http()
        try:  # the whole exchange within timeout_s (see _exchange)
            response = await self._exchange(client, payload, stream=False)
        except (TimeoutError, httpx.TransportError) as exc:
            raise self._before_response(exc) from None
        self._check_status(response)
        return self._parse_body(response, started)

    async def _stream(self, payload: dict[str, Any], started: float) -> Reply:
        client = self._http()
        try:  # the headers within timeout_s (see _exchange)
            response = await self._exchange(client, payload, stream=True)
        except (TimeoutError, httpx.TransportError) as exc:
            raise self._before_response(exc) from None
        try:
            is_events = "event-stream" in response.headers.get("content-type", "")
            if not is_events or not response.is_success:
                await self._read_all(response)
                self._check_status(response)
                return self._parse_body(response, started)
            return await self._read_events(response, started)
        finally:
            await response.aclose()

    async def _read_all(self, response: httpx.Response) -> None:
        try:
            with anyio.fail_after(self.config.timeout_s):
                await response.aread()
        except (TimeoutError, httpx.TransportError) as exc:
            raise AttemptError(
                f"reading the response body failed: {self._describe(exc)}",
                kind="stream",
                retryable=True,
                status=response.status_code,
            ) from None

    async def _read_events(self, response: httpx.Response, started: float) -> Reply:
        idle = self.config.stream_idle_timeout_s
        status = response.status_code
        events = StreamAssembler()
        ttft: float | None = None
        lines = response.aiter_lines()
        try:
            while not events.done:
                with anyio.fail_after(idle):
                    line = await anext(lines, None)
                if line is None:
                    break
                if events.feed(line) and ttft is None:
                    ttft = self._ms(started)
        except TimeoutError:
            raise AttemptError(
                f"stream idle for more than {idle:g}s",
                kind="stream",
                retryable=True,
                status=status,
                ttft_ms=ttft,
            ) from None
        except httpx.TransportError as exc:
            if not events.complete:
                raise AttemptError(
                    f"stream broke off: {self._describe(exc)}",
                    kind="stream",
                    retryable=True,
                    status=status,
                    ttft_ms=ttft,
                ) from None
        except FormatProblem as exc:
            raise self._format_error(str(exc), status, exc.sample) from None
        finally:
            aclose = getattr(lines, "aclose", None)
            if aclose is not None:
                await aclose()
        if not events.complete:
            raise AttemptError(
                "stream ended before [DONE] or a finish_reason",
                kind="stream",
                retryable=True,
                status=status,
                ttft_ms=ttft,
            )
        try:
            message, finish_reason, usage = events.result()
        except FormatProblem as exc:
            raise self._format_error(str(exc), status, exc.sample) from None
        return Reply(message, finish_reason, usage, status, self._ms(started), ttft)

    # -- outcomes ----------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        text = plain_http_text(str(exc) or type(exc).__name__, self.config.base_url)
        return self.redact(f"{type(exc).__name__}: {text}" if str(exc) else text)

    def _before_response(self, exc: BaseException) -> AttemptError:
        if isinstance(exc, TimeoutError | httpx.ReadTimeout):
            return AttemptError(
                f"no response within {self.config.timeout_s:g}s", kind="timeout", retryable=True
            )
        retryable = isinstance(exc, httpx.NetworkError | httpx.TimeoutException)
        retryable = retryable or isinstance(exc, httpx.RemoteProtocolError)
        return AttemptError(
            f"could not reach the server: {self._describe(exc)}",
            kind="connect",
            retryable=retryable,
            reached_server=False,
        )

    def _check_status(self, response: Answer) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        body = self.redact(response.text[:BODY_CHARS])
        raise AttemptError(
            f"HTTP {status}",
            kind="http",
            retryable=status_retryable(status),
            status=status,
            body=body,
            retry_after=parse_retry_after(response.headers),
        )

    def _parse_body(self, response: Answer, started: float) -> Reply:
        try:
            message, finish_reason, usage = parse_completion(response.content)
        except FormatProblem as exc:
            raise self._format_error(str(exc), response.status_code, exc.sample) from None
        return Reply(message, finish_reason, usage, response.status_code, self._ms(started))

    def _format_error(self, problem: str, status: int, sample: str) -> AttemptError:
        return AttemptError(
            f"not a valid chat completion: {problem}",
            kind="format",
            retryable=True,
            status=status,
            body=self.redact(sample[:BODY_CHARS]),
        )
