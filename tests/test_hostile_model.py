"""Broken and hostile replies from a model server (issue 13, "from the model").

A scripted server (respx behind the real provider, runtime and worker) sends every malformed
shape we know of. Each must end as recorded, settled calls with a format error (the task
fails naming it, never "internal error"), or, where the reply is usable, as a stored answer.
A fuzz test (hypothesis) then throws arbitrary JSON at the parsers: nothing but
``FormatProblem`` may escape them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from harness.provider import OpenAIProvider
from harness.provider.wire import FormatProblem, StreamAssembler, parse_completion
from harness.runtime import Runtime
from harness.store import Store, views
from harness.store.schema import calls, messages, reservations, usage_daily
from harness.testing import chat_completion
from tests.helpers import runtime, set_front_matter, submit, work

CONFIG = """
default_model = "evil"
[providers.evil]
base_url = "http://evil.test/v1"
max_retries = 1
backoff_base_s = 0.001
backoff_max_s = 0.002
stream = {stream}
[models.evil]
provider = "evil"
id = "evil-model"
max_tokens = 64
[worker]
max_attempts = 1
retry_backoff_s = 0
"""


def _choice(message: Any, finish: Any = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def _msg(**fields: Any) -> dict[str, Any]:
    return _choice({"role": "assistant", **fields})


# bodies no model call can be made of: each is a format error, recorded and settled
MALFORMED: dict[str, bytes | dict[str, Any] | list[Any]] = {
    "tool_calls is an object": _msg(tool_calls={"id": "a", "function": {"name": "x"}}),
    "tool_calls is a string": _msg(tool_calls="read_file"),
    "a tool call is a string": _msg(tool_calls=["read_file"]),
    "function is not a mapping": _msg(tool_calls=[{"id": "a", "function": "read_file"}]),
    "function is a list": _msg(tool_calls=[{"id": "a", "function": ["read_file", "{}"]}]),
    "the name is a list": _msg(tool_calls=[{"id": "a", "function": {"name": ["evil"]}}]),
    "the name is a number": _msg(tool_calls=[{"id": "a", "function": {"name": 7}}]),
    "content is an object": _msg(content={"text": "hi"}),
    "content is a number": _msg(content=12),
    "message is a string": _choice("hello"),
    "message is missing": {"choices": [{"index": 0}]},
    "a choice is null": {"choices": [None]},
    "choices is an object": {"choices": {"0": {"message": {"content": "x"}}}},
    "choices is empty": {"choices": []},
    "an error object": {"error": {"message": "overloaded"}},
    "a JSON array": [1, 2, 3],
    "a JSON string": b'"just text"',
    "not JSON": b"<html>502 Bad Gateway</html>",
    "nested past any limit": b"[" * 100_000,
    "empty": b"",
}

# streamed events no message can be assembled from
MALFORMED_EVENTS: dict[str, list[Any]] = {
    "delta is a string": [{"choices": [{"delta": "hi"}]}],
    "choices is a number": [{"choices": 3}],
    "tool_calls in a delta is an object": [{"choices": [{"delta": {"tool_calls": {"a": 1}}}]}],
    "a tool-call delta is a list": [{"choices": [{"delta": {"tool_calls": [[1, 2]]}}]}],
    "an index is text": [{"choices": [{"delta": {"tool_calls": [{"index": "zero"}]}}]}],
    "a function delta is a list": [
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": [1]}]}}]}
    ],
    "an event is an array": [[1]],
    "an event is not JSON": ["{not json"],
}


def _body(shape: bytes | dict[str, Any] | list[Any]) -> bytes:
    return shape if isinstance(shape, bytes) else json.dumps(shape).encode()


def _events(events: list[Any]) -> bytes:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    lines.append(json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    return "".join(f"data: {line}\n\n" for line in lines).encode() + b"data: [DONE]\n\n"


def _setup(ws: Path, reply: Callable[[], httpx.Response], *, stream: bool = False) -> Runtime:
    (ws / "config/harness.toml").write_text(CONFIG.format(stream=str(stream).lower()))
    for agent in ("arnold", "veblen", "simmons", "bradlee", "gulbenkian"):
        set_front_matter(ws / f"agents/{agent}.md", "model", "evil")
    set_front_matter(ws / "agents/veblen.md", "tools", "[read_file]")
    rt, _ = runtime(ws, [])
    router = respx.Router(assert_all_called=False)
    router.post("http://evil.test/v1/chat/completions").mock(side_effect=lambda _r: reply())
    rt.provider = OpenAIProvider(
        rt.settings, transport_factory=lambda n, c: httpx.MockTransport(router.async_handler)
    )
    return rt


def _ledger(store: Store) -> dict[str, Any]:
    def read(conn: Any) -> dict[str, Any]:
        outcomes = conn.execute(select(calls.c.outcome, calls.c.error)).all()
        held = conn.execute(select(func.count()).select_from(reservations)).scalar_one()
        reserved = conn.execute(select(func.sum(usage_daily.c.reserved_tokens))).scalar()
        return {"calls": outcomes, "reservations": held, "reserved": reserved or 0}

    return store.read_sync(read)


async def _one_task(rt: Runtime) -> dict[str, Any]:
    run_id, _ = await submit(rt, "Summarise the attached notes.", "veblen")
    await work(rt, concurrency=1)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None
    return run


def _assert_format_failure(run: dict[str, Any], ledger: dict[str, Any]) -> None:
    assert run["status"] == "failed"
    assert "not a valid chat completion" in (run["error"] or ""), run["error"]
    assert "internal error" not in (run["error"] or "")
    # both attempts (max_retries = 1) reached the server: recorded, settled, nothing held
    assert [o for o, _ in ledger["calls"]] == ["error", "error"]
    assert all("not a valid chat completion" in (e or "") for _, e in ledger["calls"])
    assert ledger["reservations"] == 0 and ledger["reserved"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("shape", sorted(MALFORMED))
async def test_a_malformed_reply_is_a_recorded_settled_format_error(
    workspace_dir: Path, shape: str
) -> None:
    body = _body(MALFORMED[shape])
    rt = _setup(workspace_dir, lambda: httpx.Response(200, content=body))
    run = await _one_task(rt)
    _assert_format_failure(run, _ledger(rt.store))
    await rt.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("shape", sorted(MALFORMED_EVENTS))
async def test_a_malformed_stream_is_a_recorded_settled_format_error(
    workspace_dir: Path, shape: str
) -> None:
    body = _events(MALFORMED_EVENTS[shape])
    headers = {"content-type": "text/event-stream"}
    rt = _setup(
        workspace_dir, lambda: httpx.Response(200, content=body, headers=headers), stream=True
    )
    run = await _one_task(rt)
    _assert_format_failure(run, _ledger(rt.store))
    await rt.aclose()


# replies that are odd but usable: the answer is stored, the ledger stays exact and bounded
USABLE: dict[str, tuple[dict[str, Any], str]] = {
    "usage past 64 bits": (
        {**_msg(content="fine"), "usage": {"prompt_tokens": 10**30, "completion_tokens": -5}},
        "fine",
    ),
    "usage of booleans and text": (
        {**_msg(content="fine"), "usage": {"prompt_tokens": True, "completion_tokens": "9"}},
        "fine",
    ),
    "a finish reason that is a list": (_choice({"content": "fine"}, finish=["stop"]), "fine"),
    "NUL and a lone surrogate": (_msg(content="a\u0000b\ud800c"), "a\ufffdb\ufffdc"),
    "content parts": (_msg(content=[{"type": "text", "text": "fi"}, {"text": "ne"}, 3]), "fine"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("shape", sorted(USABLE))
async def test_an_odd_but_usable_reply_is_stored(
    db_url: str, workspace_dir: Path, shape: str
) -> None:
    reply, answer = USABLE[shape]
    body = json.dumps(reply).encode()
    rt = _setup(workspace_dir, lambda: httpx.Response(200, content=body))
    rt.store.close()
    rt.store = Store.open(db_url)
    run = await _one_task(rt)
    assert run["status"] == "done" and run["answer"] == answer
    ledger = _ledger(rt.store)
    assert [o for o, _ in ledger["calls"]] == ["ok"] and ledger["reservations"] == 0
    used = rt.store.read_sync(
        lambda c: c.execute(select(calls.c.prompt_tokens, calls.c.completion_tokens)).one()
    )
    assert 0 <= used[0] < 10_000 and 0 <= used[1] < 10_000  # estimated, not 10**30
    await rt.aclose()


@pytest.mark.anyio
async def test_hostile_tool_call_ids_and_names_are_stored_and_answered(
    db_url: str, workspace_dir: Path
) -> None:
    """An id longer than its column, a name with Rich markup and control characters: the
    call is stored (a fresh id), answered as an unknown tool, and the task goes on."""
    evil = "evil[/]name\x1b]0;pwned\x07" + "x" * 300
    replies = iter(
        [
            chat_completion(None, tool_calls=[(evil, {"a": 1})]),
            chat_completion(None, tool_calls=[("read_file", "{not json")]),
            chat_completion("done"),
        ]
    )
    replies_with_ids = []
    for i, r in enumerate(replies):
        for call in r["choices"][0]["message"].get("tool_calls", []):
            call["id"] = "id-" + str(i) * 500
        replies_with_ids.append(r)
    bodies = iter(replies_with_ids)
    rt = _setup(workspace_dir, lambda: httpx.Response(200, json=next(bodies)))
    rt.store.close()
    rt.store = Store.open(db_url)
    run = await _one_task(rt)
    assert run["status"] == "done" and run["answer"] == "done"
    rows = rt.store.read_sync(
        lambda c: c.execute(select(messages.c.role, messages.c.name, messages.c.content)).all()
    )
    results = [(name, content) for role, name, content in rows if role == "tool"]
    assert len(results) == 2
    assert "not available to you" in results[0][1] and len(results[0][0]) <= 128
    assert "not valid JSON" in results[1][1]
    await rt.aclose()


# -- fuzz: nothing but FormatProblem leaves the parsers ----------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
KEYS = ["choices", "message", "delta", "tool_calls", "function", "name", "arguments", "id"]
KEYS += ["content", "index", "usage", "prompt_tokens", "finish_reason", "text", "error"]
SHAPED = st.recursive(
    JSON,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)

CALL = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON,
        "index": JSON,
        "function": st.dictionaries(st.sampled_from(KEYS), JSON) | JSON,
    },
)
MESSAGE = st.fixed_dictionaries(
    {}, optional={"content": JSON, "tool_calls": st.lists(CALL | JSON, max_size=3) | JSON}
)
REPLY = st.fixed_dictionaries(
    {"choices": st.lists(st.fixed_dictionaries({"message": MESSAGE | JSON}), max_size=2)},
    optional={"usage": st.dictionaries(st.sampled_from(KEYS), JSON) | JSON},
)
EVENT = st.fixed_dictionaries(
    {"choices": st.lists(st.fixed_dictionaries({"delta": MESSAGE | JSON}), max_size=2)},
    optional={"usage": JSON},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REPLY | SHAPED)
def test_fuzz_parse_completion_raises_only_format_problems(data: Any) -> None:
    try:
        body = json.dumps(data).encode()
    except ValueError:
        return
    try:
        message, finish, usage = parse_completion(body)
    except FormatProblem:
        return
    assert message.role == "assistant"
    assert finish is None or isinstance(finish, str)
    for count in (usage.prompt_tokens, usage.completion_tokens) if usage else ():
        assert count is None or 0 <= count <= 2**53


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT | SHAPED | st.text(max_size=30), max_size=5))
def test_fuzz_the_stream_assembler_raises_only_format_problems(events: list[Any]) -> None:
    assembler = StreamAssembler()
    try:
        for event in events:
            line = event if isinstance(event, str) else json.dumps(event)
            assembler.feed(f"data: {line}")
        message, _, _ = assembler.result()
    except FormatProblem:
        return
    assert message.role == "assistant"
    for call in message.tool_calls or []:
        assert len(call.id) <= 64 and len(call.function.name) <= 128


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_any_bytes_are_a_reply_or_a_format_problem(body: bytes) -> None:
    try:
        parse_completion(body)
    except FormatProblem as exc:
        assert len(exc.sample) <= 500


def test_a_raw_newline_inside_a_json_mode_string_is_text() -> None:
    """Local servers' grammars let a raw newline into a JSON string: the reply is read."""
    from harness.messages import ChatMessage
    from harness.provider.jsontools import decode_reply

    raw = '{"tool_calls": [{"tool": "delegate", "arguments": {"agent": "veblen", "task": "a\nb"}}]}'
    decoded = decode_reply(ChatMessage(role="assistant", content=raw), strict=True)
    [call] = decoded.tool_calls or []
    assert json.loads(call.function.arguments) == {"agent": "veblen", "task": "a\nb"}


# -- delegate calls a model can get wrong (issue 13, item 1) -----------------------------------

BAD_DELEGATIONS = {
    "agent is a list": ('{"agent": ["veblen"], "task": "x"}', "agent: Input should be a valid"),
    "not JSON": ("delegate to veblen please", "not valid JSON"),
    "agent is null": ('{"agent": null, "task": "x"}', "agent: Input should be a valid"),
    "task missing": ('{"agent": "veblen"}', "task: missing required argument"),
    "task empty": ('{"agent": "veblen", "task": "   "}', "task: String should have at least"),
    "task is a number": ('{"agent": "veblen", "task": 5}', "task: Input should be a valid"),
    "an array": ("[1, 2]", "must be a JSON object"),
    "unknown agent": ('{"agent": "nobody", "task": "x"}', "cannot delegate to 'nobody'"),
    "an extra argument": ('{"agent": "veblen", "task": "x", "urgent": true}', "unexpected"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(BAD_DELEGATIONS))
async def test_a_malformed_delegate_call_is_a_tool_error_the_chief_reads(
    workspace_dir: Path, case: str
) -> None:
    from harness.testing import ScriptedProvider

    arguments, words = BAD_DELEGATIONS[case]
    set_front_matter(workspace_dir / "agents/arnold.md", "min_delegations", "0")
    steps = iter(
        [ScriptedProvider.tool_call("delegate", arguments), ScriptedProvider.text("answered")]
    )
    rt, _ = runtime(workspace_dir, lambda request: next(steps))
    run_id, root = await submit(rt, "a goal")
    await work(rt, concurrency=1)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done" and run["answer"] == "answered"
    assert run["tasks"][0]["children"] == []  # nothing was delegated
    [result] = [m for m in await rt.store.read(views.transcript, root) if m["role"] == "tool"]
    assert result["content"].startswith("error: ") and words in result["content"], result
    await rt.aclose()
