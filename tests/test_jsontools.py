"""Tool calls through response_format, for models configured ``tools = "json"``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.messages import (
    ChatMessage,
    ChatRequest,
    FunctionCall,
    FunctionSpec,
    ToolCall,
    ToolSpec,
)
from harness.provider.jsontools import (
    SCHEMA_NAME,
    decode_reply,
    encode_request,
    flatten_history,
    is_encoded,
    reply_schema,
)

SEARCH_PARAMS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
SEARCH = ToolSpec(
    function=FunctionSpec(name="search", description="Search.", parameters=SEARCH_PARAMS)
)
FETCH = ToolSpec(function=FunctionSpec(name="fetch"))

ANSWER = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def branch(name: str, params: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {"tool": {"const": name}, "arguments": params},
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    }
    if description:
        out["description"] = description
    return out


SEARCH_BRANCH = branch("search", SEARCH_PARAMS, "Search.")
FETCH_BRANCH = branch("fetch", {"type": "object", "properties": {}})


def test_auto_allows_an_answer_or_any_tool() -> None:
    assert reply_schema([SEARCH, FETCH]) == {"anyOf": [ANSWER, SEARCH_BRANCH, FETCH_BRANCH]}
    assert reply_schema([SEARCH], "auto") == {"anyOf": [ANSWER, SEARCH_BRANCH]}


def test_required_drops_the_answer() -> None:
    assert reply_schema([SEARCH, FETCH], "required") == {"anyOf": [SEARCH_BRANCH, FETCH_BRANCH]}
    assert reply_schema([SEARCH], "required") == SEARCH_BRANCH


def test_a_named_tool_is_the_only_choice() -> None:
    choice = {"type": "function", "function": {"name": "fetch"}}
    assert reply_schema([SEARCH, FETCH], choice) == FETCH_BRANCH
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        reply_schema([SEARCH], {"type": "function", "function": {"name": "nope"}})


def test_none_means_no_schema() -> None:
    assert reply_schema([SEARCH], "none") is None


def test_the_callers_answer_schema_is_kept() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    got = reply_schema([SEARCH], None, schema)
    assert got is not None
    assert got["anyOf"][0]["properties"]["answer"] == schema


def request(**fields: Any) -> ChatRequest:
    messages = [
        ChatMessage(role="system", content="You are veblen."),
        ChatMessage(role="user", content="Find HBM prices."),
    ]
    return ChatRequest(model="m", **{"messages": messages, **fields})


def test_encode_request_moves_tools_into_the_response_format() -> None:
    encoded = encode_request(request(tools=[SEARCH], tool_choice="auto", temperature=0.1))
    assert encoded.tools is None and encoded.tool_choice is None
    assert encoded.temperature == 0.1
    assert encoded.response_format == {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "schema": {"anyOf": [ANSWER, SEARCH_BRANCH]}},
    }
    assert is_encoded(encoded)
    system = encoded.messages[0].content or ""
    assert system.startswith("You are veblen.\n\n")
    assert "- search: Search." in system and '"tool"' in system
    payload = encoded.payload("wire", stream=False)
    assert "tools" not in payload and payload["response_format"]["type"] == "json_schema"


def test_encode_request_adds_a_system_message_when_there_is_none() -> None:
    plain = ChatRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
    encoded = encode_request(plain.model_copy(update={"tools": [FETCH]}))
    assert [m.role for m in encoded.messages] == ["system", "user"]
    assert "You must call" not in (encoded.messages[0].content or "")
    forced = encode_request(plain.model_copy(update={"tools": [FETCH], "tool_choice": "required"}))
    assert "You must call a tool" in (forced.messages[0].content or "")


def test_encode_request_without_tools_changes_nothing_that_matters() -> None:
    plain = request()
    assert encode_request(plain) == plain


def test_encode_request_after_tool_use_still_asks_for_a_json_answer() -> None:
    call = ToolCall(id="c1", function=FunctionCall(name="search", arguments="{}"))
    history = [
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="go"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="c1", content="found"),
    ]
    encoded = encode_request(request(messages=history))
    assert is_encoded(encoded)
    schema = (encoded.response_format or {})["json_schema"]["schema"]
    assert schema["required"] == ["answer"] and encoded.tools is None
    assert '{"answer"' in (encoded.messages[0].content or "")
    reply = ChatMessage(role="assistant", content='{"answer": "HBM is scarce."}')
    assert decode_reply(reply, strict=True).content == "HBM is scarce."


def test_encode_request_with_none_keeps_the_callers_format() -> None:
    fmt = {"type": "json_object"}
    encoded = encode_request(request(tools=[SEARCH], tool_choice="none", response_format=fmt))
    assert encoded.response_format == fmt
    assert not is_encoded(encoded)


def test_history_with_tool_calls_is_flattened() -> None:
    call = ToolCall(id="call_9", function=FunctionCall(name="search", arguments='{"q": "HBM"}'))
    history = [
        ChatMessage(role="user", content="go"),
        ChatMessage(role="assistant", content=None, tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="call_9", content="HBM3E: $x/GB"),
    ]
    flat = flatten_history(history)
    assert [m.role for m in flat] == ["user", "assistant", "user"]
    assert json.loads(flat[1].content or "") == {"tool": "search", "arguments": {"q": "HBM"}}
    assert flat[1].tool_calls is None
    assert flat[2].content == "Result of search:\nHBM3E: $x/GB"


def test_decode_a_tool_call() -> None:
    reply = ChatMessage(role="assistant", content='{"tool": "search", "arguments": {"q": "x"}}')
    decoded = decode_reply(reply, new_id=lambda: "call_fixed")
    assert decoded.content is None
    [call] = decoded.tool_calls or []
    assert (call.id, call.function.name) == ("call_fixed", "search")
    assert json.loads(call.function.arguments) == {"q": "x"}


def test_decode_generates_distinct_ids() -> None:
    reply = ChatMessage(role="assistant", content='{"tool": "fetch", "arguments": null}')
    first, second = decode_reply(reply), decode_reply(reply)
    assert first.tool_calls and second.tool_calls
    assert first.tool_calls[0].id != second.tool_calls[0].id
    assert first.tool_calls[0].function.arguments == "{}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"answer": "HBM is memory."}', "HBM is memory."),
        ('```json\n{"answer": "fenced"}\n```', "fenced"),
        ('{"answer": {"n": 3}}', '{"n": 3}'),
        ("plain text, schema ignored", "plain text, schema ignored"),
        ('{"something": "else"}', '{"something": "else"}'),
        ("[1, 2]", "[1, 2]"),
    ],
)
def test_decode_answers_and_free_text(content: str, expected: str) -> None:
    decoded = decode_reply(ChatMessage(role="assistant", content=content))
    assert decoded.content == expected
    assert decoded.tool_calls is None


def test_decode_keeps_native_tool_calls() -> None:
    call = ToolCall(id="c", function=FunctionCall(name="search", arguments="{}"))
    message = ChatMessage(role="assistant", content='{"answer": "x"}', tool_calls=[call])
    assert decode_reply(message) is message


def test_min_tool_calls_asks_for_several_calls_in_one_reply() -> None:
    from harness.messages import ChatMessage, ChatRequest, FunctionSpec, ToolSpec
    from harness.provider.jsontools import decode_reply, encode_request

    spec = ToolSpec(
        function=FunctionSpec(
            name="delegate",
            parameters={
                "type": "object",
                "properties": {"agent": {"enum": ["a", "b"]}, "task": {"type": "string"}},
                "required": ["agent", "task"],
            },
        )
    )
    request = ChatRequest(
        model="m",
        messages=[ChatMessage(role="system", content="s"), ChatMessage(role="user", content="u")],
        tools=[spec],
        tool_choice="required",
        min_tool_calls=2,
    )
    sent = encode_request(request)
    schema = (sent.response_format or {})["json_schema"]["schema"]
    assert schema["required"] == ["tool_calls"]
    assert schema["properties"]["tool_calls"]["minItems"] == 2
    assert schema["properties"]["tool_calls"]["items"]["properties"]["tool"] == {
        "const": "delegate"
    }
    assert "at least 2" in (sent.messages[0].content or "")
    reply = ChatMessage(
        role="assistant",
        content='{"tool_calls": [{"tool": "delegate", "arguments": {"agent": "a", "task": "x"}},'
        ' {"tool": "delegate", "arguments": {"agent": "b", "task": "y"}}]}',
    )
    ids = iter(["c1", "c2"])
    decoded = decode_reply(reply, new_id=lambda: next(ids))
    assert [(c.id, c.function.name, c.function.arguments) for c in decoded.tool_calls or []] == [
        ("c1", "delegate", '{"agent": "a", "task": "x"}'),
        ("c2", "delegate", '{"agent": "b", "task": "y"}'),
    ]


def test_wire_format_for_llama_cpp_python() -> None:
    from harness.provider.jsontools import wire_format

    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert wire_format(fmt, "json_schema") is fmt
    assert wire_format(fmt, "json_object") == {"type": "json_object", "schema": {"type": "object"}}
    assert wire_format({"type": "text"}, "json_object") == {"type": "text"}


def test_strict_decode_rejects_a_reply_cut_short() -> None:
    import pytest

    from harness.messages import ChatMessage
    from harness.provider.jsontools import decode_reply

    cut = ChatMessage(role="assistant", content='{"tool_calls": [{"tool": "delegate", "argu')
    assert decode_reply(cut) is cut  # lenient: kept as text
    with pytest.raises(ValueError, match="cut short"):
        decode_reply(cut, strict=True)
    with pytest.raises(ValueError, match="neither"):
        decode_reply(ChatMessage(role="assistant", content='{"x": 1}'), strict=True)
