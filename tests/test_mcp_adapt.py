"""MCP tools as harness tools, piece by piece: names, grammar-safe schemas, results as text."""

from __future__ import annotations

import json
import re
from typing import Any

import mcp_types as mt
import pytest
from llama_cpp.llama_grammar import LlamaGrammar

from harness.errors import ToolError
from harness.messages import FunctionSpec, ToolSpec
from harness.provider.jsontools import reply_schema
from harness.tools.mcp_adapt import grammar_safe, result_text, selected, tool_name, tool_names
from tests.mcp_fixture import LONG_NAME, NASTY_SCHEMA

OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def compiles(parameters: dict[str, Any]) -> bool:
    """Whether llama.cpp builds a grammar for the JSON-mode reply offering one tool with
    these parameters (its server silently falls back to any JSON when it cannot)."""
    tool = ToolSpec(function=FunctionSpec(name="t", description="", parameters=parameters))
    schema = reply_schema([tool], "auto")
    try:
        LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception:
        return False
    return True


def test_names_are_sanitised_and_long_ones_shortened_with_a_stable_hash() -> None:
    assert tool_name("git", "git_log") == "git__git_log"
    assert tool_name("fs", "read.file/v2 (beta)") == "fs__read_file_v2__beta_"
    long = tool_name("fx", LONG_NAME)
    assert OPENAI_NAME.match(long) and len(long) == 64
    assert long == tool_name("fx", LONG_NAME)  # deterministic
    assert long[:55] == f"fx__{LONG_NAME}"[:55] and re.fullmatch(r"_[0-9a-f]{8}", long[55:])
    assert tool_name("fx", LONG_NAME + "2") != long  # the hash tells them apart


def test_names_that_collide_after_sanitising_stay_distinct() -> None:
    names = tool_names("s", ["a.b", "a_b", "a/b", "c"])
    assert names["s__a_b"] == "a_b"  # the name that needed no change keeps it
    assert names["s__c"] == "c"
    assert sorted(names.values()) == ["a.b", "a/b", "a_b", "c"]
    assert all(OPENAI_NAME.match(n) for n in names)
    assert names == tool_names("s", ["c", "a/b", "a_b", "a.b"])  # order does not matter


def test_include_and_exclude_take_names_and_patterns() -> None:
    assert selected("git_log", None, [])
    assert selected("git_log", ["git_*"], []) and not selected("push", ["git_*"], [])
    assert not selected("git_push", ["git_*"], ["*push"])


def test_an_unfriendly_schema_becomes_one_a_grammar_can_enforce() -> None:
    assert not compiles(NASTY_SCHEMA)  # as the server lists it, llama.cpp gives up
    safe = grammar_safe(NASTY_SCHEMA)
    assert compiles(safe)
    props = safe["properties"]
    assert safe["required"] == ["when"]  # a required name with no property would never parse
    assert safe["additionalProperties"] is False and "title" not in safe
    assert props["when"] == {
        "type": "string",
        "description": "(format date-time; pattern ^[0-9]{4}-(0[1-9]|1[0-2]))",
    }
    assert props["count"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["count"]["description"] == "(greater than 0)"
    assert props["anything"]["type"] == ["string", "number", "boolean", "object", "array", "null"]
    assert props["mode"] == {"anyOf": [{"const": "fast"}, {"const": "slow"}]}
    assert props["both"]["properties"] == {"x": {"type": "integer"}}
    assert props["both"]["required"] == ["x"]
    tree = props["tree"]  # a recursive $ref: inlined once, then an open object
    assert tree["properties"]["label"] == {"type": "string"}
    assert tree["properties"]["kids"] == {"type": "object"}


@pytest.mark.parametrize(
    "schema",
    [
        None,
        {},
        {"type": "object"},
        {"type": "object", "properties": {"q": {"type": "string", "maxLength": 100_000}}},
        {"type": "object", "properties": {"xs": {"type": "array", "items": [{"type": "int"}]}}},
        {"properties": {"a": {"$ref": "#/definitions/A"}}, "definitions": {"A": {"enum": [1, 2]}}},
        {"type": "object", "properties": {"r": {"$ref": "https://example.com/elsewhere.json"}}},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"type": "object", "properties": {"deep": {"$ref": "#/$defs/D"}}, "$defs": {"D": True}},
    ],
)
def test_every_schema_is_made_grammar_safe(schema: dict[str, Any] | None) -> None:
    safe = grammar_safe(schema)
    assert safe["type"] == "object" and "properties" in safe and "required" in safe
    assert compiles(safe)


def test_huge_repetition_counts_move_to_the_description() -> None:
    safe = grammar_safe(
        {"type": "object", "properties": {"q": {"type": "string", "maxLength": 100_000}}}
    )
    assert safe["properties"]["q"] == {"type": "string", "description": "(maxLength 100000)"}
    kept = grammar_safe({"type": "object", "properties": {"q": {"type": "string", "maxLength": 9}}})
    assert kept["properties"]["q"] == {"type": "string", "maxLength": 9}


def _result(*blocks: mt.ContentBlock, structured: Any = None, error: bool = False) -> str:
    return result_text(
        mt.CallToolResult(content=list(blocks), structured_content=structured, is_error=error)
    )


def test_results_become_text() -> None:
    assert _result(mt.TextContent(text="a"), mt.TextContent(text="b")) == "a\nb"
    assert _result(structured={"n": 1}) == '{"n": 1}'
    assert _result(mt.TextContent(text='{"n": 1}'), structured={"n": 1}) == '{"n": 1}'
    assert _result(mt.TextContent(text="n is 1"), structured={"n": 1}) == 'n is 1\n{"n": 1}'
    audio = mt.AudioContent(data="A" * 40_000, mime_type="audio/wav")
    assert _result(audio) == "[audio: audio/wav, 29 KiB]"
    blob = mt.BlobResourceContents(uri="file:///a.bin", blob="AAAA", mime_type=None)
    assert (
        _result(mt.EmbeddedResource(resource=blob))
        == "[resource file:///a.bin: unknown type, 3 bytes]"
    )
    link = mt.ResourceLink(name="r", uri="https://x.test/r", mime_type="text/html", size=12)
    assert _result(link) == "[resource link https://x.test/r: text/html, 12 bytes]"


def test_an_error_result_raises_with_the_servers_text() -> None:
    with pytest.raises(ToolError, match=r"^no such branch$"):
        _result(mt.TextContent(text="no such branch"), error=True)
    with pytest.raises(ToolError, match="said nothing more"):
        _result(error=True)
