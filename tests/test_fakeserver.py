"""The fake OpenAI-compatible server: answers, usage, tool calls, faults, counting, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from harness.errors import ProviderError
from harness.messages import ChatMessage, ChatRequest, FunctionSpec, ToolSpec
from harness.provider import OpenAIProvider
from harness.provider.wire import StreamAssembler
from harness.settings import Settings
from harness.testing.fakeserver import FakeConfig, FakeServer, fake_arguments
from harness.usage import CallOutcome

pytestmark = pytest.mark.anyio

DELEGATE = {
    "type": "function",
    "function": {
        "name": "delegate",
        "parameters": {
            "type": "object",
            "properties": {
                "agent": {"type": "string", "enum": ["veblen", "simmons"]},
                "task": {"type": "string"},
                "note": {"type": "string"},
            },
            "required": ["agent", "task"],
        },
    },
}
OTHER = {"type": "function", "function": {"name": "note_search", "parameters": {}}}


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body | extra


@asynccontextmanager
async def serve(config: FakeConfig | None = None) -> AsyncIterator[tuple[FakeServer, Any]]:
    """An in-process server on a free port, and an httpx client for its base URL."""
    async with FakeServer(config) as server, httpx.AsyncClient(base_url=server.base_url) as c:
        yield server, c


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeServer, httpx.AsyncClient]]:
    async with serve() as pair:
        yield pair


async def post(client: httpx.AsyncClient, stream: bool = False, **extra: Any) -> httpx.Response:
    return await client.post("/chat/completions", json=chat(stream, **extra))


def assemble(text: str) -> StreamAssembler:
    events = StreamAssembler()
    for line in text.splitlines():
        events.feed(line)
    return events


async def test_plain_answer_with_deterministic_usage(fake: Any) -> None:
    server, client = fake
    body = chat(max_tokens=5)
    r = await client.post("/chat/completions", json=body)
    data = r.json()
    assert r.status_code == 200
    assert data["choices"][0]["message"]["content"] == "lorem ipsum dolor sit amet"
    assert data["choices"][0]["finish_reason"] == "length"  # capped by max_tokens
    sent = len(r.request.content)
    assert data["usage"] == {
        "prompt_tokens": sent // 4,
        "completion_tokens": 5,
        "total_tokens": sent // 4 + 5,
    }
    r = await client.post("/chat/completions", json=chat())
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == 16
    models = (await client.get("/models")).json()
    assert models["data"][0]["id"] == "fake-model"
    assert server.stats()["completions"] == 2


async def test_stream_with_and_without_usage(fake: Any) -> None:
    _server, client = fake
    r = await client.post("/chat/completions", json=chat(stream=True, max_tokens=3))
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")
    events = assemble(r.text)
    message, finish, usage = events.result()
    assert events.done and finish == "length" and message.content == "lorem ipsum dolor"
    assert usage is not None and usage.completion_tokens == 3 and usage.prompt_tokens
    r = await client.post("/chat/completions", json=chat(stream=True) | {"stream_options": {}})
    assert assemble(r.text).result()[2] is None  # include_usage not asked


async def test_tool_call_when_required_picks_the_first_enum_value(fake: Any) -> None:
    _server, client = fake
    ids = set()
    for stream in (False, True, False):
        body = chat(stream, tools=[DELEGATE, OTHER], tool_choice="required")
        r = await client.post("/chat/completions", json=body)
        if stream:
            message, finish, _ = assemble(r.text).result()
            [call] = message.tool_calls or []
            name, args, call_id = call.function.name, call.function.arguments, call.id
        else:
            choice = r.json()["choices"][0]
            finish = choice["finish_reason"]
            [raw] = choice["message"]["tool_calls"]
            name, args, call_id = raw["function"]["name"], raw["function"]["arguments"], raw["id"]
        assert finish == "tool_calls" and name == "delegate"
        assert json.loads(args) == {"agent": "veblen", "task": "fake task"}
        ids.add(call_id)
    assert len(ids) == 3  # unique: delegation keys children by the call id
    auto = await client.post("/chat/completions", json=chat(tools=[DELEGATE], tool_choice="auto"))
    assert auto.json()["choices"][0]["message"].get("tool_calls") is None
    named = {"type": "function", "function": {"name": "note_search"}}
    r = await post(client, tools=[DELEGATE, OTHER], tool_choice=named)
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "note_search"


async def test_tool_call_knob() -> None:
    async with serve(FakeConfig(tool_calls="always")) as (server, client):
        r = await client.post("/chat/completions", json=chat(tools=[OTHER], tool_choice="auto"))
        assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
        r = await client.post("/chat/completions", json=chat(tools=[OTHER], tool_choice="none"))
        assert "tool_calls" not in r.json()["choices"][0]["message"]
        await client.post("/reset", json={"tool_calls": "never"})
        assert server.config.tool_calls == "never"
        body = chat(tools=[DELEGATE], tool_choice="required")
        r = await client.post("/chat/completions", json=body)
        assert "tool_calls" not in r.json()["choices"][0]["message"]


def test_fake_arguments_fill_simple_schemas() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "flag": {"type": ["null", "boolean"]},
            "mode": {"enum": ["a", "b"]},
            "level": {"type": "string", "default": "high"},
            "inner": {"type": "object", "properties": {"x": {"type": "number"}}},
            "tags": {"type": "array"},
        },
    }
    assert fake_arguments(schema) == {
        "n": 1,
        "flag": False,
        "mode": "a",
        "level": "high",
        "inner": {"x": 1},
        "tags": [],
    }


async def test_scheduled_faults_and_counting() -> None:
    schedule = ("429", "500", "malformed", "no_usage", "cut", "stall", "ok")
    config = FakeConfig(schedule=schedule, retry_after_s=2.5, stall_s=0.05)
    async with serve(config) as (server, client):
        for stream in (False, True):
            await client.post("/reset")
            r = await post(client, stream)
            assert r.status_code == 429 and r.headers["retry-after"] == "2.5"
            assert (await post(client, stream)).status_code == 500
            r = await post(client, stream)
            assert r.status_code == 200
            if stream:
                with pytest.raises(ValueError):
                    assemble(r.text)
            else:
                with pytest.raises(ValueError):
                    json.loads(r.content)
            r = await post(client, stream)
            usage = assemble(r.text).result()[2] if stream else r.json().get("usage")
            assert usage is None
            with pytest.raises(httpx.RemoteProtocolError):  # cut: body ends early
                await post(client, stream)
            with pytest.raises(httpx.RemoteProtocolError):  # stall, then the connection drops
                await post(client, stream)
            assert (await post(client, stream)).status_code == 200  # the schedule is over: all ok
            assert (await post(client, stream)).status_code == 200
            stats = server.stats()
            assert stats["received"] == 8 and stats["served"] == 6 and stats["completions"] == 3
            assert stats["by_outcome"]["cut"] == {"received": 1, "served": 0}
            assert stats["by_outcome"]["stall"] == {"received": 1, "served": 0}
            assert stats["by_outcome"]["ok"] == {"received": 2, "served": 2}
            assert stats["in_flight"] == 0 and stats["aborted"] == 0


async def test_cut_stream_has_output_but_no_end(fake: Any) -> None:
    server, client = fake
    await client.post("/reset", json={"schedule": ["cut"]})
    seen = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=chat(True)) as r:
            async for chunk in r.aiter_bytes():
                seen += chunk
    events = assemble(seen.decode())
    assert events.result()[0].content and not events.complete
    assert server.stats()["served"] == 0


async def test_probabilities_are_seeded_and_reset_rewinds() -> None:
    config = FakeConfig(seed=7, p_429=0.3, p_500=0.2, p_no_usage=0.2)
    async with serve(config) as (server, client):

        async def sequence() -> list[str]:
            out = []
            for _ in range(30):
                r = await client.post("/chat/completions", json=chat())
                out.append(
                    str(r.status_code) if r.status_code != 200 else "u" * ("usage" in r.json())
                )
            return out

        first = await sequence()
        await client.post("/reset")
        assert await sequence() == first
        assert {"429", "500", "u", ""} == set(first)
        r = await client.post("/reset", json={"seed": 8})
        assert r.json()["config"]["seed"] == 8
        assert await sequence() != first
        bad = await client.post("/reset", json={"p_500": 2.0})
        assert bad.status_code == 400 and server.config.seed == 8
    with pytest.raises(ValueError):
        FakeConfig(schedule=("nope",))


async def test_latency_knobs(fake: Any) -> None:
    server, client = fake
    server.reset(FakeConfig(ttft_s=0.2, token_delay_s=0.02, completion_tokens=5))
    t0 = time.perf_counter()
    await client.post("/chat/completions", json=chat())
    assert time.perf_counter() - t0 >= 0.2 + 4 * 0.02
    t0 = time.perf_counter()
    arrivals: list[float] = []
    async with client.stream("POST", "/chat/completions", json=chat(True)) as r:
        async for line in r.aiter_lines():
            if '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter() - t0)
    assert len(arrivals) == 5 and arrivals[0] >= 0.2
    assert arrivals[-1] - arrivals[0] >= 4 * 0.02 * 0.9


async def test_a_client_leaving_mid_stream_is_counted_aborted(fake: Any) -> None:
    server, client = fake
    server.reset(FakeConfig(token_delay_s=0.05, completion_tokens=40))
    async with client.stream("POST", "/chat/completions", json=chat(True)) as r:
        async for _ in r.aiter_lines():
            break
    for _ in range(100):
        if server.stats()["aborted"]:
            break
        await anyio.sleep(0.02)
    stats = server.stats()
    assert stats["aborted"] == 1 and stats["served"] == 0 and stats["in_flight"] == 0


async def test_openai_provider_retries_through_the_faults() -> None:
    schedule = ("429", "500", "malformed", "cut", "no_usage", "500", "500")
    async with serve(FakeConfig(schedule=schedule, retry_after_s=0)) as (server, _client):
        settings = Settings.model_validate(
            {
                "providers": {
                    "f": {"base_url": server.base_url, "stream": True, "backoff_base_s": 0.01}
                },
                "models": {"m": {"provider": "f", "id": "wire", "max_tokens": 8}},
                "default_model": "m",
            }
        )
        provider = OpenAIProvider(settings)
        try:
            await _provider_round(server, provider)
        finally:
            await provider.aclose()


async def _provider_round(server: FakeServer, provider: OpenAIProvider) -> None:
    request = ChatRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
    done = await provider.complete(request)
    assert done.message.content == "lorem ipsum dolor sit amet consectetur adipiscing elit"
    assert done.usage.estimated  # the server sent no usage
    outcomes = [r.outcome for r in done.records]
    assert outcomes == [CallOutcome.ERROR] * 4 + [CallOutcome.OK]
    tools = [ToolSpec(function=FunctionSpec.model_validate(DELEGATE["function"]))]
    server.reset(FakeConfig(schedule=("500",), repeat_schedule=True))
    with pytest.raises(ProviderError) as info:
        await provider.complete(request.model_copy(update={"tools": tools}))
    assert len(info.value.records) == 5  # max_retries=4
    server.reset(FakeConfig())
    forced = request.model_copy(update={"tools": tools, "tool_choice": "required"})
    [call] = (await provider.complete(forced)).message.tool_calls or []
    assert json.loads(call.function.arguments)["agent"] == "veblen"


async def test_the_request_log_says_when_each_request_came_and_on_which_connection() -> None:
    async with serve(FakeConfig(schedule=("ok", "cut"))) as (server, client):
        before = time.time()
        await client.get("/models")
        await post(client)
        with pytest.raises(httpx.TransportError):
            await post(client)  # cut: never served
        log = (await client.get("/requests")).json()["requests"]
        chat_path = "/v1/chat/completions"
        assert [e["path"] for e in log] == ["/v1/models", chat_path, chat_path]
        assert before <= log[0]["arrived"] <= log[1]["arrived"] <= log[2]["arrived"]
        assert log[1]["arrived"] <= log[1]["served"] and log[2]["served"] is None
        assert log[0]["port"] == log[1]["port"]  # one keep-alive connection
        server.reset()
        assert (await client.get("/requests")).json()["requests"] == []


def test_subprocess_prints_its_port_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.testing.fakeserver", "--port", "0", "--schedule", "500,ok"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening 127.0.0.1:")
        url = f"http://{line.split()[1]}"
        with httpx.Client(base_url=url) as client:
            assert client.post("/v1/chat/completions", json=chat()).status_code == 500
            assert client.post("/v1/chat/completions", json=chat()).status_code == 200
            stats = client.get("/stats").json()
        assert stats["served"] == 2 and stats["completions"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_json_schema_replies_follow_the_schema(fake: Any) -> None:
    """Models served with ``tools = "json"`` get their tools as a response-format schema."""
    from harness.provider import jsontools

    _server, client = fake
    spec = ToolSpec(function=FunctionSpec.model_validate(DELEGATE["function"]))
    fan_out = jsontools.reply_schema([spec], "required", min_calls=2)
    assert fan_out is not None
    r = await post(client, True, response_format=jsontools.response_format(fan_out))
    message = jsontools.decode_reply(assemble(r.text).result()[0])
    args = [json.loads(c.function.arguments) for c in message.tool_calls or []]
    assert args == [
        {"agent": "veblen", "task": "fake task"},
        {"agent": "simmons", "task": "fake task"},
    ]
    either = jsontools.reply_schema([spec], "auto")
    assert either is not None
    r = await post(client, response_format=jsontools.response_format(either), max_tokens=2)
    content = r.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"answer": "lorem ipsum"}
    assert r.json()["usage"]["completion_tokens"] == len(range(0, len(content), 4))
    llama_cpp_python = {"type": "json_object", "schema": either}
    r = await post(client, response_format=llama_cpp_python, max_tokens=1)
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"answer": "lorem"}
    r = await post(client, response_format={"type": "json_object"}, max_tokens=1)
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"answer": "lorem"}
