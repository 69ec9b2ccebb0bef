"""OpenAIProvider, non-streaming: payloads, retries, pacing, fallbacks, usage, secrets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx
import pytest
import respx
from structlog.testing import capture_logs

from harness.errors import ConfigError, ProviderError, ResponseFormatError
from harness.messages import ChatMessage, ChatRequest, FunctionSpec, ToolSpec
from harness.provider import OpenAIProvider
from harness.provider.openai import FORMAT_ATTEMPTS
from harness.provider.tokens import estimate_prompt_tokens
from harness.settings import Settings
from harness.testing import FakeClock, chat_completion
from harness.usage import CallOutcome, CallRecord

pytestmark = pytest.mark.anyio

URL_A = "http://a.test/v1/chat/completions"
URL_B = "http://b.test/v1/chat/completions"
KEY = "sk-test-SECRET-0123456789abcdef"


def make_settings(a: dict[str, Any] | None = None, **models: dict[str, Any]) -> Settings:
    """Provider ``a`` (keyed) and ``b``; model ``m`` on a (falls back to ``n``), ``n`` on b."""
    provider = {"max_retries": 3, "backoff_base_s": 0.5, "backoff_max_s": 8.0}
    return Settings.model_validate(
        {
            "providers": {
                "a": {"base_url": "http://a.test/v1", "api_key_env": "TEST_KEY_A"}
                | provider
                | (a or {}),
                "b": {"base_url": "http://b.test/v1"} | provider,
            },
            "models": {
                "m": {"provider": "a", "id": "wire-m", "max_tokens": 100} | models.get("m", {}),
                "n": {"provider": "b", "id": "wire-n", "max_tokens": 50} | models.get("n", {}),
            },
            "default_model": "m",
        }
    )


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> respx.Router:
    monkeypatch.setenv("TEST_KEY_A", KEY)
    return respx.Router(assert_all_called=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def provider_for(
    router: respx.Router, clock: FakeClock, settings: Settings | None = None
) -> OpenAIProvider:
    return OpenAIProvider(
        settings or make_settings(),
        transport_factory=lambda name, config: httpx.MockTransport(router.async_handler),
        sleep=clock.sleep,
        clock=clock,
    )


def ask(model: str = "m", **fields: Any) -> ChatRequest:
    messages = [ChatMessage(role="user", content="What is HBM?")]
    return ChatRequest(model=model, messages=messages, **fields)


def ok(**kwargs: Any) -> httpx.Response:
    return httpx.Response(200, json=chat_completion(**kwargs))


SEARCH = ToolSpec(
    function=FunctionSpec(
        name="search",
        description="Search the web.",
        parameters={"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    )
)


# -- payloads and answers ----------------------------------------------------------------


async def test_payload_is_exactly_the_openai_request(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL_A).mock(return_value=ok())
    provider = provider_for(router, clock)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    request = ask(
        tools=[SEARCH],
        tool_choice="required",
        response_format=fmt,
        max_tokens=77,
        temperature=0.2,
        seed=7,
        stop=["END"],
    )
    await provider.complete(request)
    sent = route.calls.last.request
    assert json.loads(sent.content) == {
        "model": "wire-m",
        "messages": [{"role": "user", "content": "What is HBM?"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "search",
                    "description": "Search the web.",
                    "parameters": SEARCH.function.parameters,
                },
            }
        ],
        "tool_choice": "required",
        "response_format": fmt,
        "max_tokens": 77,
        "temperature": 0.2,
        "seed": 7,
        "stop": ["END"],
    }
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    await provider.aclose()


async def test_max_tokens_defaults_to_the_models_config(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL_A).mock(return_value=ok())
    provider = provider_for(router, clock)
    await provider.complete(ask())
    assert json.loads(route.calls.last.request.content)["max_tokens"] == 100
    assert "stream" not in json.loads(route.calls.last.request.content)


async def test_answer_usage_and_record(router: respx.Router, clock: FakeClock) -> None:
    body = chat_completion("HBM is memory.", usage=None)
    body["usage"] = {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    body["system_fingerprint"] = "fp_x"  # unknown fields are tolerated
    body["choices"][0]["message"]["refusal"] = None
    body["choices"][0]["logprobs"] = None
    router.post(URL_A).mock(return_value=httpx.Response(200, json=body))
    done = await provider_for(router, clock).complete(ask())
    assert done.message == ChatMessage(role="assistant", content="HBM is memory.")
    assert done.finish_reason == "stop"
    assert done.model == "m"
    usage = done.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (120, 30)
    assert (usage.cached_tokens, usage.reasoning_tokens, usage.estimated) == (100, 12, False)
    [record] = done.records
    assert (record.provider, record.model, record.outcome) == ("a", "m", CallOutcome.OK)
    assert (record.status, record.attempt, record.usage) == (200, 1, usage)


async def test_tool_calls_are_normalised(router: respx.Router, clock: FakeClock) -> None:
    body = chat_completion(None, tool_calls=[("search", {"q": "HBM"})])
    call = body["choices"][0]["message"]["tool_calls"][0]
    call["function"]["arguments"] = {"q": "HBM"}  # some servers send an object
    del call["id"]  # and some send no id
    router.post(URL_A).mock(return_value=httpx.Response(200, json=body))
    done = await provider_for(router, clock).complete(ask(tools=[SEARCH]))
    [got] = done.message.tool_calls or []
    assert got.function.name == "search"
    assert json.loads(got.function.arguments) == {"q": "HBM"}
    assert got.id.startswith("call_")
    assert done.finish_reason == "tool_calls"


@pytest.mark.parametrize("usage", [None, (0, 0)])
async def test_missing_usage_is_estimated(
    router: respx.Router, clock: FakeClock, usage: tuple[int, int] | None
) -> None:
    router.post(URL_A).mock(return_value=ok(content="HBM stacks DRAM dies.", usage=usage))
    request = ask()
    done = await provider_for(router, clock).complete(request)
    assert done.usage.estimated
    assert done.usage.prompt_tokens == estimate_prompt_tokens(request) > 0
    assert done.usage.completion_tokens > 0
    assert done.records[0].usage == done.usage


async def test_unknown_model_is_a_config_error(router: respx.Router, clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        await provider_for(router, clock).complete(ask("nope"))


# -- retries -----------------------------------------------------------------------------


async def test_429_retry_after_seconds_is_honoured(router: respx.Router, clock: FakeClock) -> None:
    route = router.post(URL_A).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"), ok()]
    )
    done = await provider_for(router, clock).complete(ask())
    assert clock.sleeps == [7.0]
    assert route.call_count == 2
    first, second = done.records
    assert (first.outcome, first.status, first.attempt) == (CallOutcome.ERROR, 429, 1)
    assert (second.outcome, second.status, second.attempt) == (CallOutcome.OK, 200, 2)


async def test_429_retry_after_http_date_is_honoured(
    router: respx.Router, clock: FakeClock
) -> None:
    server_now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    headers = {
        "Date": format_datetime(server_now, usegmt=True),
        "Retry-After": format_datetime(server_now + timedelta(seconds=30), usegmt=True),
    }
    router.post(URL_A).mock(side_effect=[httpx.Response(429, headers=headers), ok()])
    await provider_for(router, clock).complete(ask())
    assert clock.sleeps == [30.0]


async def test_500_then_success_backs_off_with_jitter(
    router: respx.Router, clock: FakeClock
) -> None:
    router.post(URL_A).mock(side_effect=[httpx.Response(500, text="oops"), ok()])
    done = await provider_for(router, clock).complete(ask())
    [delay] = clock.sleeps
    assert 0.25 <= delay <= 0.5  # base 0.5, equal jitter
    assert [r.status for r in done.records] == [500, 200]
    assert done.records[0].error == "HTTP 500"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_never_retried(
    router: respx.Router, clock: FakeClock, status: int
) -> None:
    route = router.post(URL_A).mock(return_value=httpx.Response(status, text="bad request"))
    with pytest.raises(ProviderError) as info:
        await provider_for(router, clock).complete(ask())
    assert route.call_count == 1
    assert clock.sleeps == []
    err = info.value
    assert (err.provider, err.model, err.status, err.body) == ("a", "m", status, "bad request")
    assert not err.retryable
    assert [r.status for r in err.records] == [status]
    assert f"HTTP {status}" in str(err) and "'m'" in str(err) and "'a'" in str(err)


async def test_retries_are_bounded_and_back_off_exponentially(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL_A).mock(return_value=httpx.Response(503, text="x" * 2000))
    with pytest.raises(ProviderError) as info:
        await provider_for(router, clock).complete(ask())
    assert route.call_count == 4  # max_retries=3
    assert [r.attempt for r in info.value.records] == [1, 2, 3, 4]
    ceilings = [0.5, 1.0, 2.0]
    assert all(c / 2 <= d <= c for d, c in zip(clock.sleeps, ceilings, strict=True))
    assert info.value.status == 503 and info.value.retryable
    assert info.value.body is not None and len(info.value.body) == 500


async def test_read_timeout_is_retried_and_recorded(router: respx.Router, clock: FakeClock) -> None:
    router.post(URL_A).mock(side_effect=[httpx.ReadTimeout("slow"), ok()])
    done = await provider_for(router, clock).complete(ask())
    timeout, good = done.records
    assert (timeout.outcome, timeout.status, good.attempt) == (CallOutcome.ERROR, None, 2)
    assert "no response" in (timeout.error or "")


async def test_deadline_applies_to_a_hanging_server(router: respx.Router, clock: FakeClock) -> None:
    calls = 0

    async def hang_once(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(30)
        return ok()

    router.post(URL_A).mock(side_effect=hang_once)
    settings = make_settings({"timeout_s": 0.05})
    with anyio.fail_after(5):
        done = await provider_for(router, clock, settings).complete(ask())
    assert [r.status for r in done.records] == [None, 200]


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
    ],
)
async def test_connection_errors_are_retried_without_a_record(
    router: respx.Router, clock: FakeClock, error: Exception
) -> None:
    router.post(URL_A).mock(side_effect=[error, ok()])
    done = await provider_for(router, clock).complete(ask())
    [record] = done.records  # the failed attempt never reached a server
    assert (record.outcome, record.attempt) == (CallOutcome.OK, 2)


async def test_malformed_json_is_retried_a_few_times_then_fails(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL_A).mock(return_value=httpx.Response(200, text="<html>oops</html>"))
    settings = make_settings({"max_retries": 6})
    with pytest.raises(ResponseFormatError) as info:
        await provider_for(router, clock, settings).complete(ask())
    assert route.call_count == FORMAT_ATTEMPTS
    assert info.value.body == "<html>oops</html>"
    assert info.value.status == 200
    assert len(info.value.records) == FORMAT_ATTEMPTS
    assert all(r.outcome == CallOutcome.ERROR for r in info.value.records)


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"object": "list", "data": []},
        {"error": {"message": "model overloaded"}},
        {"choices": [{"index": 0, "finish_reason": "stop"}]},
    ],
)
async def test_bodies_that_are_not_completions(
    router: respx.Router, clock: FakeClock, body: dict[str, Any]
) -> None:
    router.post(URL_A).mock(side_effect=[httpx.Response(200, json=body), ok(content="fine")])
    done = await provider_for(router, clock).complete(ask())
    assert done.message.content == "fine"
    bad, good = done.records
    assert (bad.outcome, bad.status, good.outcome) == (CallOutcome.ERROR, 200, CallOutcome.OK)
    assert "not a valid chat completion" in (bad.error or "")


# -- fallbacks ---------------------------------------------------------------------------


async def test_fallback_runs_in_order_across_providers(
    router: respx.Router, clock: FakeClock
) -> None:
    router.post(URL_A).mock(return_value=httpx.Response(500))
    route_b = router.post(URL_B).mock(return_value=ok(content="from b"))
    settings = make_settings({"max_retries": 1}, m={"fallbacks": ["n"]})
    with capture_logs() as logs:
        done = await provider_for(router, clock, settings).complete(ask())
    assert (done.model, done.message.content) == ("n", "from b")
    assert [(r.provider, r.model, r.status) for r in done.records] == [
        ("a", "m", 500),
        ("a", "m", 500),
        ("b", "n", 200),
    ]
    assert json.loads(route_b.calls.last.request.content)["model"] == "wire-n"
    assert json.loads(route_b.calls.last.request.content)["max_tokens"] == 50
    assert "authorization" not in route_b.calls.last.request.headers  # b has no key
    events = [e["event"] for e in logs]
    assert events == ["model_call_retry", "model_call_failed", "model_fallback"]
    fallback = logs[-1]
    assert (fallback["from_model"], fallback["model"], fallback["provider"]) == ("m", "n", "b")


async def test_every_model_failing_raises_with_all_records(
    router: respx.Router, clock: FakeClock
) -> None:
    router.post(URL_A).mock(return_value=httpx.Response(502))
    router.post(URL_B).mock(return_value=httpx.Response(401, json={"error": "no key"}))
    settings = make_settings({"max_retries": 1}, m={"fallbacks": ["n", "n", "m"]})
    with pytest.raises(ProviderError) as info:
        await provider_for(router, clock, settings).complete(ask())
    err = info.value
    assert (err.provider, err.model, err.status) == ("b", "n", 401)
    assert err.body == '{"error":"no key"}'
    assert [(r.provider, r.status) for r in err.records] == [("a", 502), ("a", 502), ("b", 401)]
    assert str(err) == (
        "model 'n' on provider 'b' (fallback for 'm') failed after 1 attempt(s):"
        ' HTTP 401: {"error":"no key"}'
    )


# -- pacing and concurrency --------------------------------------------------------------


async def test_a_429_pauses_every_call_to_that_provider(router: respx.Router) -> None:
    """B starts while A sleeps off a 429; B must wait for the same instant before sending."""
    clock = FakeClock()
    release = anyio.Event()
    a_sleeping = anyio.Event()
    sleepers: list[float] = []

    async def gated_sleep(seconds: float) -> None:
        sleepers.append(seconds)
        a_sleeping.set()
        await release.wait()
        clock.now = max(clock.now, 1000.0 + 7.0)

    route = router.post(URL_A).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), ok(), ok()]
    )
    provider = OpenAIProvider(
        make_settings(),
        transport_factory=lambda name, config: httpx.MockTransport(router.async_handler),
        sleep=gated_sleep,
        clock=clock,
    )
    results = []

    async def call() -> None:
        results.append(await provider.complete(ask()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await a_sleeping.wait()
        clock.now += 2.0  # two seconds into A's pause, B arrives
        tg.start_soon(call)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert route.call_count == 1  # B has not sent anything
        assert sleepers == [7.0, 5.0]  # B waits out the rest of the shared pause
        release.set()
    assert route.call_count == 3
    assert len(results) == 2


async def test_in_flight_calls_are_limited_to_max_concurrency(
    router: respx.Router, clock: FakeClock
) -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        return ok()

    router.post(URL_A).mock(side_effect=slow)
    provider = provider_for(router, clock, make_settings({"max_concurrency": 2}))
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(provider.complete, ask())
    assert peak == 2


async def test_requests_per_minute_paces_calls(router: respx.Router, clock: FakeClock) -> None:
    router.post(URL_A).mock(return_value=ok())
    provider = provider_for(router, clock, make_settings({"requests_per_minute": 2}))
    for _ in range(3):
        await provider.complete(ask())
    assert clock.sleeps == [pytest.approx(30.0)]  # the third waits for one request's refill


# -- secrets -----------------------------------------------------------------------------


async def test_api_key_never_reaches_logs_errors_or_records(
    router: respx.Router, clock: FakeClock
) -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    router.post(URL_A).mock(
        side_effect=[httpx.Response(500, text=f"key {KEY} broke"), httpx.Response(401, json=echo)]
    )
    router.post(URL_B).mock(
        side_effect=[httpx.ConnectError(f"refused {KEY}"), httpx.Response(403, text=KEY)]
    )
    settings = make_settings(m={"fallbacks": ["n"]})
    provider = provider_for(router, clock, settings)
    with capture_logs() as logs, pytest.raises(ProviderError) as info:
        await provider.complete(ask())
    sent = router.routes[0].calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"  # the test is not vacuous
    err = info.value
    assert err.body is not None and "[redacted]" in err.body
    everything = [str(err), repr(err), err.body, repr(err.records), repr(logs), repr(err.args)]
    assert all(KEY not in text for text in everything)
    assert {e["event"] for e in logs} >= {"model_call_retry", "model_fallback"}


# -- transports --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_default_transports_work_under_respx(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, transport: str
) -> None:
    """The real transports, intercepted at the client (``respx.mock(using="httpx")``)."""
    monkeypatch.setenv("TEST_KEY_A", KEY)
    settings = make_settings({"transport": transport})
    provider = OpenAIProvider(settings, sleep=clock.sleep, clock=clock)
    with respx.mock(using="httpx") as mock:
        mock.post(URL_A).mock(side_effect=[httpx.Response(503), ok(content="real")])
        done = await provider.complete(ask())
    assert done.message.content == "real"
    await provider.aclose()


# -- models without native tools ---------------------------------------------------------


async def test_json_tools_model_gets_a_schema_and_answers_with_tool_calls(
    router: respx.Router, clock: FakeClock
) -> None:
    reply = json.dumps({"tool": "search", "arguments": {"q": "HBM"}})
    route = router.post(URL_A).mock(return_value=ok(content=reply))
    settings = make_settings(m={"tools": "json"})
    done = await provider_for(router, clock, settings).complete(ask(tools=[SEARCH]))
    sent = json.loads(route.calls.last.request.content)
    assert "tools" not in sent and "tool_choice" not in sent
    schema = sent["response_format"]["json_schema"]["schema"]
    assert [b["properties"].get("tool") for b in schema["anyOf"]] == [None, {"const": "search"}]
    assert sent["messages"][0]["role"] == "system"
    [call] = done.message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("search", {"q": "HBM"})
    assert done.message.content is None


async def test_json_tools_are_per_model_in_a_fallback_chain(
    router: respx.Router, clock: FakeClock
) -> None:
    router.post(URL_A).mock(return_value=httpx.Response(404))
    route_b = router.post(URL_B).mock(return_value=ok(content='{"answer": "not decoded"}'))
    settings = make_settings(m={"tools": "json", "fallbacks": ["n"]})
    done = await provider_for(router, clock, settings).complete(ask(tools=[SEARCH]))
    sent = json.loads(route_b.calls.last.request.content)
    assert sent["tools"][0]["function"]["name"] == "search"  # n speaks native tools
    assert done.message.content == '{"answer": "not decoded"}'


# -- a real socket: stale keep-alive connections -----------------------------------------


async def _serve_once_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer one request with keep-alive, then drop the connection when the next arrives
    (a server closing an idle connection just as the client reuses it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    body = json.dumps(chat_completion("fresh")).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await reader.read(1)
    writer.transport.abort()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_stale_keep_alive_connection_is_retried(clock: FakeClock, transport: str) -> None:
    server = await asyncio.start_server(_serve_once_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings.model_validate(
        {
            "providers": {"p": {"base_url": f"http://127.0.0.1:{port}/v1", "transport": transport}},
            "models": {"m": {"provider": "p", "id": "x"}},
        }
    )
    provider = OpenAIProvider(settings, sleep=clock.sleep, clock=clock)
    try:
        with anyio.fail_after(10), capture_logs() as logs:
            for _ in range(3):
                done = await provider.complete(ask())
                assert done.message.content == "fresh"
                assert len(done.records) == 1  # the dropped attempt never reached the server
    finally:
        await provider.aclose()
        server.close()
    retries = [e for e in logs if e["event"] == "model_call_retry"]
    assert len(retries) == 2 and all(e["kind"] == "connect" for e in retries)


async def test_cancellation_is_not_retried(router: respx.Router, clock: FakeClock) -> None:
    entered = 0

    async def hang(request: httpx.Request) -> httpx.Response:
        nonlocal entered
        entered += 1
        await anyio.sleep(30)
        return ok()

    router.post(URL_A).mock(side_effect=hang)
    provider = provider_for(router, clock)
    with anyio.move_on_after(0.05) as scope:
        await provider.complete(ask())
    assert scope.cancelled_caught
    await anyio.sleep(0.05)
    assert entered == 1 and clock.sleeps == []


async def test_json_tools_with_an_unknown_named_tool_fail_clearly(
    router: respx.Router, clock: FakeClock
) -> None:
    settings = make_settings(m={"tools": "json"})
    choice = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(ProviderError, match="unknown tool 'nope'") as info:
        await provider_for(router, clock, settings).complete(
            ask(tools=[SEARCH], tool_choice=choice)
        )
    assert (info.value.model, info.value.records) == ("m", [])


class _Hooks:
    """Attempts hooks that note what they hear; ``refuse`` raises before attempt N."""

    def __init__(self, grant: int | None = None, refuse_at: int | None = None) -> None:
        self.before_calls: list[tuple[str, list[int | None], int, int]] = []
        self.sent = 0
        self.grant, self.refuse_at = grant, refuse_at

    async def before(
        self, model: str, failed: Sequence[CallRecord], *, prompt_tokens: int, max_tokens: int
    ) -> int:
        from harness.errors import BudgetExceeded

        self.before_calls.append((model, [r.status for r in failed], prompt_tokens, max_tokens))
        if self.refuse_at == len(self.before_calls):
            raise BudgetExceeded("veblen", "daily token budget", 10, 9, 5, "2026-11-29")
        return max_tokens if self.grant is None else self.grant

    def sending(self) -> None:
        self.sent += 1


async def test_attempt_hooks_cover_every_attempt_and_can_stop_the_call(
    router: respx.Router, clock: FakeClock
) -> None:
    from harness.errors import BudgetExceeded

    route = router.post(URL_A).mock(side_effect=[httpx.Response(500, text="oops"), ok()])
    hooks = _Hooks()
    done = await provider_for(router, clock).complete(ask(), attempts=hooks)
    assert [(m, failed) for m, failed, _, _ in hooks.before_calls] == [("m", []), ("m", [500])]
    assert hooks.sent == 2 and [r.status for r in done.records] == [500, 200]
    prompt, asked = hooks.before_calls[0][2:]
    assert prompt > 0 and asked == json.loads(route.calls[0].request.content)["max_tokens"]

    router.post(URL_A).mock(side_effect=[httpx.Response(500, text="oops"), ok()])
    refusing = _Hooks(refuse_at=2)
    with pytest.raises(BudgetExceeded) as info:
        await provider_for(router, clock).complete(ask(), attempts=refusing)
    assert [r.status for r in info.value.records] == [500]  # type: ignore[attr-defined]


async def test_a_granted_max_tokens_is_what_the_attempt_asks_for(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL_A).mock(side_effect=[ok()])
    await provider_for(router, clock).complete(ask(), attempts=_Hooks(grant=77))
    assert json.loads(route.calls[0].request.content)["max_tokens"] == 77


def test_a_key_read_from_any_variable_never_reaches_a_log_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    import structlog

    from harness import logs
    from harness.settings import ProviderConfig

    monkeypatch.setenv("MY_LLM_CREDENTIAL", "sk-live-0123456789")  # no telltale suffix
    cfg = ProviderConfig(base_url="http://127.0.0.1:1/v1", api_key_env="MY_LLM_CREDENTIAL")
    assert cfg.api_key() == "sk-live-0123456789"
    out = io.StringIO()
    logs.configure(json=True, stream=out)
    try:
        structlog.get_logger().warning("upstream_said", body="bad key sk-live-0123456789 given")
    finally:
        structlog.reset_defaults()
    assert "sk-live-0123456789" not in out.getvalue() and "[redacted]" in out.getvalue()
