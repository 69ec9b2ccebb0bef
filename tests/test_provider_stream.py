"""OpenAIProvider, streaming: SSE assembly, tool-call deltas, cut and stalled streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import httpx
import pytest
import respx

from harness.errors import ProviderError, ResponseFormatError
from harness.messages import ChatMessage, ChatRequest
from harness.provider import OpenAIProvider
from harness.settings import Settings
from harness.testing import FakeClock, chat_completion, chat_stream, chat_stream_events
from harness.usage import CallOutcome

pytestmark = pytest.mark.anyio

URL = "http://s.test/v1/chat/completions"
SSE = {"content-type": "text/event-stream"}


def make_settings(**provider: Any) -> Settings:
    config = {
        "base_url": "http://s.test/v1",
        "stream": True,
        "max_retries": 2,
        "backoff_base_s": 0.1,
        "stream_idle_timeout_s": 0.05,
    }
    return Settings.model_validate(
        {
            "providers": {"s": config | provider},
            "models": {"m": {"provider": "s", "id": "wire-m", "max_tokens": 64}},
            "default_model": "m",
        }
    )


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def provider_for(router: respx.Router, clock: FakeClock, **provider: Any) -> OpenAIProvider:
    return OpenAIProvider(
        make_settings(**provider),
        transport_factory=lambda name, config: httpx.MockTransport(router.async_handler),
        sleep=clock.sleep,
        clock=clock,
    )


def ask(**fields: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(role="user", content="hi")], **fields)


def sse(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers=SSE, content=body)


def sse_live(events: Iterable[bytes], then: BaseException | None = None) -> httpx.Response:
    """A stream that sends ``events`` and then raises ``then``."""

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield event
        if then is not None:
            raise then

    return httpx.Response(200, headers=SSE, content=body())


def stalled(events: Iterable[bytes]) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield event
        await anyio.sleep(30)

    return httpx.Response(200, headers=SSE, content=body())


async def test_stream_payload_asks_for_usage(router: respx.Router, clock: FakeClock) -> None:
    route = router.post(URL).mock(return_value=sse(chat_stream()))
    await provider_for(router, clock).complete(ask())
    sent = json.loads(route.calls.last.request.content)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_text_stream_is_assembled(router: respx.Router, clock: FakeClock) -> None:
    router.post(URL).mock(return_value=sse(chat_stream(["HBM ", "is ", "fast."], usage=(40, 3))))
    done = await provider_for(router, clock).complete(ask())
    assert done.message == ChatMessage(role="assistant", content="HBM is fast.")
    assert done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (40, 3)
    assert not done.usage.estimated
    [record] = done.records
    assert record.outcome == CallOutcome.OK and record.ttft_ms is not None


async def test_streamed_tool_calls_are_assembled_by_index(
    router: respx.Router, clock: FakeClock
) -> None:
    events = chat_stream_events(
        [],
        tool_calls=[("search", {"q": "HBM supply"}), ("fetch", {"url": "http://x.test/a"})],
        finish_reason="tool_calls",
    )
    head, tail = events[:1], events[1:-3]
    # interleave the two calls' deltas: the assembly must go by index, not by order
    first, second = tail[:3], tail[3:]
    interleaved = [first[0], second[0], first[1], second[1], first[2], second[2]]
    router.post(URL).mock(return_value=sse(b"".join(head + interleaved + events[-3:])))
    done = await provider_for(router, clock).complete(ask())
    calls = done.message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [("call_1", "search"), ("call_2", "fetch")]
    assert json.loads(calls[0].function.arguments) == {"q": "HBM supply"}
    assert json.loads(calls[1].function.arguments) == {"url": "http://x.test/a"}
    assert done.message.content is None
    assert done.finish_reason == "tool_calls"


async def test_stream_without_usage_is_estimated(router: respx.Router, clock: FakeClock) -> None:
    router.post(URL).mock(return_value=sse(chat_stream(["a long answer"], usage=None)))
    done = await provider_for(router, clock).complete(ask())
    assert done.usage.estimated
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0


async def test_finish_reason_without_done_is_complete(
    router: respx.Router, clock: FakeClock
) -> None:
    router.post(URL).mock(return_value=sse(chat_stream(["whole"], usage=None, done=False)))
    done = await provider_for(router, clock).complete(ask())
    assert done.message.content == "whole"
    assert len(done.records) == 1


async def test_cut_stream_is_retried_never_a_short_answer(
    router: respx.Router, clock: FakeClock
) -> None:
    cut = chat_stream(["half an ans"], finish_reason=None, usage=None, done=False)
    route = router.post(URL).mock(side_effect=[sse(cut), sse(chat_stream(["whole answer"]))])
    done = await provider_for(router, clock).complete(ask())
    assert done.message.content == "whole answer"
    assert route.call_count == 2
    bad, good = done.records
    assert (bad.outcome, bad.status, good.attempt) == (CallOutcome.ERROR, 200, 2)
    assert "ended before" in (bad.error or "")


async def test_stream_broken_by_the_connection_is_retried(
    router: respx.Router, clock: FakeClock
) -> None:
    events = chat_stream_events(["par", "tial"], finish_reason=None, usage=None, done=False)
    broken = sse_live(events, httpx.RemoteProtocolError("peer closed connection"))
    router.post(URL).mock(side_effect=[broken, sse(chat_stream(["ok"]))])
    done = await provider_for(router, clock).complete(ask())
    assert done.message.content == "ok"
    assert "broke off" in (done.records[0].error or "")


async def test_stream_idle_past_the_timeout_is_aborted_and_retried(
    router: respx.Router, clock: FakeClock
) -> None:
    events = chat_stream_events(["slow"], finish_reason=None, usage=None, done=False)
    router.post(URL).mock(side_effect=[stalled(events), sse(chat_stream(["quick"]))])
    with anyio.fail_after(5):
        done = await provider_for(router, clock).complete(ask())
    assert done.message.content == "quick"
    assert "idle" in (done.records[0].error or "")
    assert done.records[0].ttft_ms is not None  # the stall came after the first token


async def test_stalled_streams_fail_after_the_retries(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL).mock(side_effect=lambda request: stalled([]))
    with anyio.fail_after(5), pytest.raises(ProviderError) as info:
        await provider_for(router, clock).complete(ask())
    assert route.call_count == 3
    assert info.value.retryable and info.value.status == 200


async def test_stream_error_status_is_handled_like_any_other(
    router: respx.Router, clock: FakeClock
) -> None:
    limited = httpx.Response(429, headers={"retry-after": "3"}, json={"error": "rate"})
    router.post(URL).mock(side_effect=[limited, sse(chat_stream())])
    done = await provider_for(router, clock).complete(ask())
    assert clock.sleeps == [3.0]
    assert [r.status for r in done.records] == [429, 200]


async def test_a_server_ignoring_stream_true_is_understood(
    router: respx.Router, clock: FakeClock
) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, json=chat_completion("plain")))
    done = await provider_for(router, clock).complete(ask())
    assert done.message.content == "plain"


@pytest.mark.parametrize(
    "bad",
    [b"data: {not json\n\n", b'data: {"error": {"message": "overloaded"}}\n\n'],
)
async def test_malformed_stream_events_are_format_errors(
    router: respx.Router, clock: FakeClock, bad: bytes
) -> None:
    router.post(URL).mock(return_value=sse(bad))
    with pytest.raises(ResponseFormatError) as info:
        await provider_for(router, clock).complete(ask())
    assert info.value.body == bad.decode()[len("data: ") :].strip()


async def test_request_stream_flag_overrides_the_provider(
    router: respx.Router, clock: FakeClock
) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(200, json=chat_completion()))
    await provider_for(router, clock).complete(ask(stream=False))
    assert "stream" not in json.loads(route.calls.last.request.content)
    route.mock(return_value=sse(chat_stream()))
    await provider_for(router, clock, stream=False).complete(ask(stream=True))
    assert json.loads(route.calls.last.request.content)["stream"] is True
