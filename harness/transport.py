"""One provider's HTTP side: a pooled client, a concurrency limiter, pacing, and one attempt.

:class:`ProviderClient` sends one ``POST /chat/completions`` and turns the outcome into a
:class:`Reply` or an :class:`AttemptError`. It never retries: retry decisions live in
``harness.provider`` (one place), which reads ``AttemptError.retryable`` and ``retry_after``.

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
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import httpx
from pydantic import ValidationError

from .jsontools import new_call_id
from .messages import ChatMessage, WireUsage
from .pacing import Clock, Pacer, Sleep, parse_retry_after
from .settings import ProviderConfig
from .usage import Usage

TransportFactory = Callable[[str, ProviderConfig], httpx.AsyncBaseTransport]
ErrorKind = Literal["http", "format", "connect", "timeout", "stream"]

CHAT_PATH = "/chat/completions"
BODY_CHARS = 500
RETRYABLE_STATUS = frozenset({408, 409, 429})
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret")
# request bodies as httpx writes them; built once (json.dumps with options builds one a call)
_BODY = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


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


@dataclass(frozen=True)
class RawAnswer:
    """A whole (decoded) response body with its status and headers."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def default_transport(config: ProviderConfig) -> httpx.AsyncBaseTransport:
    """The configured transport, its keep-alive pool sized to ``max_concurrency``."""
    size = config.max_concurrency
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    tls: dict[str, Any] = {}
    if config.base_url.startswith("http://"):
        # plain HTTP (e.g. a local model server) never uses TLS: skip loading the CA bundle
        # (tens of ms before the first call); a context without CAs fails closed if used
        tls["verify"] = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits, **tls)
    return httpx.AsyncHTTPTransport(limits=limits, retries=0, **tls)


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
        self._aiohttp: Any = None  # our own httpx_aiohttp transport, when that is in use
        self._aiohttp_call: tuple[Any, str, dict[str, Any]] | None = None  # session, URL, options
        self._limiter: anyio.Semaphore | None = None
        # shared by all providers: a server may echo any of our keys back
        self._secrets: set[str] = set() if secrets is None else secrets

    # -- setup -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"user-agent": "harness", **self.config.headers}
        for name, value in self.config.headers.items():
            if any(word in name.lower() for word in _SECRET_HEADER_WORDS) and len(value) >= 8:
                self._secrets.add(value)
        key = self.config.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
            self._secrets.add(key)
        return headers

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
            aiohttp_own = self._factory is None and self.config.transport == "aiohttp"
            self._aiohttp = transport if aiohttp_own else None
        return self._client

    # The hot path. A call is one POST, so it skips what ``AsyncClient.build_request`` and
    # ``AsyncClient.send`` redo on every request: parsing and merging the URL and headers,
    # the auth flow, redirect handling, the cookie jar and event hooks (none of which an API
    # call uses: no cookies are kept). The request goes to the transport the client picks
    # for the URL, so proxy mounts (and respx, in tests) still apply. When that is our own
    # aiohttp transport, a non-streamed call goes straight to its aiohttp session, without
    # the httpx request and response stream wrappers. Measured in docs/benchmarks.md (B1).

    def _body(self, payload: dict[str, Any]) -> bytes:
        """``payload`` as JSON, encoded as httpx encodes it."""
        return _BODY.encode(payload).encode("utf-8")

    async def _exchange(
        self, client: httpx.AsyncClient, payload: dict[str, Any], *, stream: bool
    ) -> Any:
        """Send the POST and return the response (its body read unless ``stream``): an
        ``httpx.Response``, or a :class:`RawAnswer` from the direct aiohttp path."""
        assert self._url is not None and self._post_headers is not None
        body = self._body(payload)
        transport_for = getattr(client, "_transport_for_url", None)
        transport = transport_for(self._url) if transport_for is not None else None
        if transport is not None and transport is self._aiohttp and not stream:
            return await self._aiohttp_post(transport, body)  # with its own deadline
        with anyio.fail_after(self.config.timeout_s):
            return await self._send(client, transport, body, stream=stream)

    async def _send(
        self, client: httpx.AsyncClient, transport: Any, body: bytes, *, stream: bool
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

    async def _aiohttp_post(self, transport: Any, body: bytes) -> RawAnswer:
        """One POST on the aiohttp session of our ``httpx_aiohttp`` transport, with the same
        options and error mapping as its ``handle_async_request``; aiohttp decodes the body
        (gzip and deflate are all this path asks for) and enforces the ``timeout_s``
        deadline (``total``: a ``TimeoutError``, like ``anyio.fail_after`` on the other
        path, at less cost)."""
        session, url, options = self._aiohttp_call or self._aiohttp_setup(transport)
        try:
            async with session.request("POST", url, data=body, **options) as resp:
                content = await resp.read()
        except Exception:  # aiohttp's errors as httpx's (only a failed call pays for it)
            from httpx_aiohttp.transport import map_aiohttp_exceptions

            with map_aiohttp_exceptions():
                raise
        return RawAnswer(resp.status, resp.headers, content)

    def _aiohttp_setup(self, transport: Any) -> tuple[Any, str, dict[str, Any]]:
        """The session, URL and request options of every direct aiohttp POST (built once)."""
        import aiohttp

        assert self._url is not None and self._post_headers is not None
        if not isinstance(transport.client, aiohttp.ClientSession):
            transport.client = transport.get_client()
        proxy = transport.proxy
        headers = httpx.Headers(self._post_headers)
        headers["accept-encoding"] = "gzip, deflate"  # what aiohttp always decodes
        options = {
            "headers": list(headers.multi_items()),
            "allow_redirects": False,
            "compress": False,
            "timeout": aiohttp.ClientTimeout(
                total=self.config.timeout_s, sock_connect=self.config.connect_timeout_s
            ),
            "proxy": str(proxy.url) if proxy else None,
        }
        self._aiohttp_call = (transport.client, str(self._url), options)
        return self._aiohttp_call

    def limiter(self) -> anyio.Semaphore:
        """At most ``max_concurrency`` calls in flight; the rest queue here, not in the pool."""
        if self._limiter is None:
            self._limiter = anyio.Semaphore(self.config.max_concurrency)
        return self._limiter

    def redact(self, text: str) -> str:
        """``text`` with every known secret (of any provider) replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._url = self._post_headers = self._aiohttp = self._aiohttp_call = None
            await client.aclose()

    # -- one attempt -------------------------------------------------------------------

    async def send(self, payload: dict[str, Any], *, stream: bool, tokens: int) -> Reply:
        """Send one request once (after pacing) and return the reply, or raise AttemptError."""
        await self.pacer.wait_turn(tokens)
        limiter = self.limiter()
        try:  # a free slot is taken without a trip through the event loop (the common case)
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            await self.pacer.wait_paused()
            started = self._clock()
            try:
                if stream:
                    return await self._stream(payload, started)
                return await self._post(payload, started)
            except AttemptError as exc:
                exc.latency_ms = self._ms(started)
                raise
        finally:
            limiter.release()

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
        message, finish_reason, usage = events.result()
        return Reply(message, finish_reason, usage, status, self._ms(started), ttft)

    # -- outcomes ----------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
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


# -- the wire format, tolerantly ---------------------------------------------------------


class FormatProblem(ValueError):
    """A body (or stream event) that is not what a chat completion looks like."""

    def __init__(self, problem: str, sample: bytes | str) -> None:
        super().__init__(problem)
        raw = sample if isinstance(sample, bytes) else sample.encode("utf-8", "replace")
        self.sample = raw[:BODY_CHARS].decode("utf-8", "replace")


def parse_completion(body: bytes) -> tuple[ChatMessage, str | None, WireUsage | None]:
    """The first choice's message, its finish reason and the usage of a non-streamed reply."""
    try:
        data = json.loads(body)
    except ValueError:
        raise FormatProblem("the body is not JSON", body) from None
    if not isinstance(data, dict):
        raise FormatProblem("the body is not a JSON object", body)
    choices = data.get("choices")
    if not isinstance(choices, list):
        what = "an error object" if "error" in data else "no choices"
        raise FormatProblem(f"the body has {what}", body)
    if not choices or not isinstance(choices[0], dict):
        raise FormatProblem("the body has empty choices", body)
    try:
        message = _message(choices[0].get("message"))
    except (ValidationError, ValueError):
        raise FormatProblem("the first choice has no valid message", body) from None
    return message, choices[0].get("finish_reason"), _wire_usage(data.get("usage"))


def _arguments(raw: Any) -> str:
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)


def _content(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, list):  # content parts
        return "".join(p.get("text", "") for p in raw if isinstance(p, dict))
    return str(raw)


def _message(raw: Any) -> ChatMessage:
    """An assistant message from a server's JSON, filling gaps servers are known to leave."""
    if not isinstance(raw, dict):
        raise ValueError("no message")
    content = _content(raw.get("content"))
    if not raw.get("tool_calls"):  # plain text, the common reply
        return ChatMessage(role="assistant", content=content)
    calls = []
    for call in raw["tool_calls"]:
        fn = call.get("function") or {}
        calls.append(
            {
                "id": call.get("id") or new_call_id(),
                "type": "function",
                "function": {
                    "name": fn.get("name") or "",
                    "arguments": _arguments(fn.get("arguments")) or "{}",
                },
            }
        )
    return ChatMessage.model_validate(
        {"role": "assistant", "content": content, "tool_calls": calls}
    )


def _wire_usage(raw: Any) -> WireUsage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return WireUsage.model_validate(raw)
    except ValidationError:
        return None


class StreamAssembler:
    """Builds one assistant message from ``data:`` lines of a chat-completions stream.

    Tool-call deltas are assembled by their ``index``: the first delta brings the id and
    name, the following ones pieces of the arguments. ``complete`` is True once ``[DONE]``
    or a finish reason arrived; a stream without either was cut off.
    """

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self.usage: WireUsage | None = None
        self._content: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}

    @property
    def complete(self) -> bool:
        return self.done or self.finish_reason is not None

    def feed(self, line: str) -> bool:
        """Take one line; True when it carried generated output (content or a tool call)."""
        line = line.strip()
        if not line.startswith("data:"):
            return False  # blank lines, comments, event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            raise FormatProblem("a stream event is not JSON", data) from None
        if not isinstance(chunk, dict) or "error" in chunk:
            raise FormatProblem("the stream carried an error or a non-object event", data)
        self.usage = _wire_usage(chunk.get("usage")) or self.usage
        produced = False
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                produced = self._choice(choice) or produced
        return produced

    def _choice(self, choice: dict[str, Any]) -> bool:
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        produced = False
        text = _content(delta.get("content"))
        if text:
            self._content.append(text)
            produced = True
        if delta.get("reasoning_content"):
            produced = True
        for position, call in enumerate(delta.get("tool_calls") or []):
            self._tool_delta(call, position)
            produced = True
        return produced

    def _tool_delta(self, delta: dict[str, Any], position: int) -> None:
        index = delta.get("index", position)
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        fn = delta.get("function") or {}
        if delta.get("id"):
            call["id"] = delta["id"]
        name = fn.get("name")
        if name and name != call["name"]:
            call["name"] += name
        call["arguments"] += _arguments(fn.get("arguments"))

    def result(self) -> tuple[ChatMessage, str | None, WireUsage | None]:
        """The assembled message, finish reason and usage (if the server sent it)."""
        calls = [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self._calls.items())
        ]
        raw = {"content": "".join(self._content) or None, "tool_calls": calls}
        return _message(raw), self.finish_reason, self.usage
