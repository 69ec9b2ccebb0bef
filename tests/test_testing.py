"""ScriptedProvider and the other test helpers shipped in harness.testing."""

from __future__ import annotations

import json

import pytest

from harness.errors import ProviderError
from harness.messages import ChatMessage, ChatRequest
from harness.provider import Completion, Provider
from harness.provider.tokens import estimate_prompt_tokens
from harness.testing import (
    FakeClock,
    ScriptedProvider,
    ScriptExhausted,
    chat_completion,
    chat_stream,
)
from harness.usage import CallOutcome, CallRecord, Usage

pytestmark = pytest.mark.anyio


def ask(text: str = "hello", model: str = "local") -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(role="user", content=text)])


async def test_answers_in_order_and_records_requests() -> None:
    provider = ScriptedProvider(
        [ScriptedProvider.tool_call("search", {"q": "HBM"}), ScriptedProvider.text("done")]
    )
    first = await provider.complete(ask("one"))
    second = await provider.complete(ask("two"))
    [call] = first.message.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "search",
        {"q": "HBM"},
    )
    assert first.finish_reason == "tool_calls" and first.message.content is None
    assert (second.message.content, second.finish_reason) == ("done", "stop")
    assert [r.messages[0].content for r in provider.requests] == ["one", "two"]
    assert provider.last_request.messages[0].content == "two"
    assert provider.completions == [first, second]
    provider.assert_exhausted()


async def test_usage_is_realistic_and_recorded() -> None:
    provider = ScriptedProvider(["an answer of some length"])
    request = ask("a question")
    done = await provider.complete(request)
    assert done.usage.prompt_tokens == estimate_prompt_tokens(request)
    assert done.usage.completion_tokens > 0 and not done.usage.estimated
    assert done.model == "local"
    assert done.records == [
        CallRecord(
            provider="scripted",
            model="local",
            outcome=CallOutcome.OK,
            usage=done.usage,
            status=200,
        )
    ]
    flagged = await ScriptedProvider(["x"], estimated=True).complete(request)
    assert flagged.usage.estimated


async def test_explicit_usage_and_model() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=800)
    provider = ScriptedProvider([ScriptedProvider.text("x", usage=usage, model="fallback")])
    done = await provider.complete(ask())
    assert (done.usage, done.model, done.records[0].model) == (usage, "fallback", "fallback")


async def test_parallel_tool_calls_and_raw_arguments() -> None:
    step = ScriptedProvider.tool_calls(("a", {"x": 1}), ("b", "{not json", "mine"))
    done = await ScriptedProvider([step]).complete(ask())
    calls = done.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "a", '{"x": 1}'),
        ("mine", "b", "{not json"),
    ]


async def test_errors_are_raised_with_a_record() -> None:
    provider = ScriptedProvider([ScriptedProvider.error(429, "slow down"), TimeoutError])
    with pytest.raises(ProviderError) as info:
        await provider.complete(ask(model="gpt"))
    assert (info.value.status, info.value.body, info.value.model) == (429, "slow down", "gpt")
    [record] = info.value.records
    assert (record.outcome, record.status, record.model) == (CallOutcome.ERROR, 429, "gpt")
    with pytest.raises(TimeoutError):
        await provider.complete(ask())
    assert len(provider.requests) == 2


async def test_callable_steps_see_the_request() -> None:
    def echo(request: ChatRequest) -> str:
        return f"you said {request.messages[-1].content}"

    provider = ScriptedProvider([echo, "static"])
    assert (await provider.complete(ask("x"))).message.content == "you said x"
    assert (await provider.complete(ask("y"))).message.content == "static"


async def test_a_callable_script_never_runs_out() -> None:
    provider = ScriptedProvider(lambda request: ScriptedProvider.text(str(len(request.messages))))
    for _ in range(5):
        assert (await provider.complete(ask())).message.content == "1"
    assert provider.remaining == 0
    provider.assert_exhausted()


async def test_running_out_is_a_clear_assertion() -> None:
    provider = ScriptedProvider(["only one"])
    await provider.complete(ask())
    with pytest.raises(ScriptExhausted, match=r"after 1 step\(s\); call #2 .*'second question'"):
        await provider.complete(ask("second question"))
    assert isinstance(ScriptExhausted("x"), AssertionError)


async def test_completion_steps_pass_through_and_add_extends() -> None:
    canned = Completion(ChatMessage(role="assistant", content="c"), "stop", Usage(1, 1), "m", [])
    provider = ScriptedProvider().add(canned, ChatMessage(role="assistant", content="msg"))
    assert provider.remaining == 2
    assert await provider.complete(ask()) is canned
    assert (await provider.complete(ask())).message.content == "msg"
    with pytest.raises(AssertionError, match="never used"):
        ScriptedProvider(["unused"]).assert_exhausted()


async def test_it_is_a_provider() -> None:
    provider: Provider = ScriptedProvider(["x"])
    await provider.aclose()
    assert isinstance(provider, ScriptedProvider) and provider.closed


async def test_fake_clock_advances_when_sleeping() -> None:
    clock = FakeClock(start=5.0)
    await clock.sleep(2.5)
    assert (clock(), clock.sleeps) == (7.5, [2.5])


def test_body_builders_look_like_openai() -> None:
    body = chat_completion(None, tool_calls=[("f", {"a": 1})], usage=(3, 4))
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"]["total_tokens"] == 7
    stream = chat_stream(["a", "b"]).decode()
    assert stream.endswith("data: [DONE]\n\n") and '"include_usage"' not in stream
    assert stream.count("data: ") == 6  # role, a, b, finish, usage, [DONE]
