"""The chat-completions wire format, read tolerantly: a whole reply, or a stream of events.

Servers differ in what they leave out or add; these parsers fill the known gaps (missing ids,
arguments sent as objects, content parts) and turn anything that is not a chat completion into
a :class:`FormatProblem` carrying the first bytes of what arrived.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..messages import ChatMessage, WireUsage
from .jsontools import new_call_id

__all__ = ["BODY_CHARS", "FormatProblem", "StreamAssembler", "parse_completion"]

BODY_CHARS = 500


class FormatProblem(ValueError):
    """A body (or stream event) that is not what a chat completion looks like."""

    def __init__(self, problem: str, sample: bytes | str) -> None:
        super().__init__(problem)
        raw = sample if isinstance(sample, bytes) else sample.encode("utf-8", "replace")
        self.sample = raw[:BODY_CHARS].decode("utf-8", "replace")


def parse_completion(body: bytes) -> tuple[ChatMessage, str | None, WireUsage | None]:
    """The first choice's message, its finish reason and the usage of a non-streamed reply.

    Any body that is not a chat completion (whatever its JSON holds) raises FormatProblem,
    and nothing else: the caller records it as one failed call with a format error.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
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
    except _Malformed as exc:
        raise FormatProblem(f"the first choice's message is malformed: {exc}", body) from None
    return message, _finish(choices[0].get("finish_reason")), _wire_usage(data.get("usage"))


class _Malformed(ValueError):
    """A part of a reply that is not what the wire format allows; says which part."""


MAX_ID_CHARS = 64  # a longer (or non-printable) tool-call id is replaced by a fresh one
MAX_NAME_CHARS = 128  # tool names are at most 64; a longer one is kept cut (still unknown)


def _finish(raw: Any) -> str | None:
    return raw[:32] if isinstance(raw, str) and raw else None


def _arguments(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    try:  # an object (some servers send one), or any JSON value: the tool says what is wrong
        return json.dumps(raw, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise _Malformed("tool-call arguments are not JSON") from None


def _content(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, list):  # content parts: the text ones count
        return "".join(
            p["text"] for p in raw if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    raise _Malformed(f"content is a JSON {type(raw).__name__}, not text")


def _call_id(raw: Any) -> str:
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_CHARS and raw.isprintable():
        return raw
    return new_call_id()


def _name(raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise _Malformed(f"a tool call's name is a JSON {type(raw).__name__}, not text")
    return raw[:MAX_NAME_CHARS]


def _tool_calls(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _Malformed(f"tool_calls is a JSON {type(raw).__name__}, not a list")
    calls = []
    for call in raw:
        if not isinstance(call, dict):
            raise _Malformed("a tool call is not an object")
        fn = call.get("function")
        if fn is None:
            fn = {}
        if not isinstance(fn, dict):
            raise _Malformed("a tool call's function is not an object")
        calls.append(
            {
                "id": _call_id(call.get("id")),
                "type": "function",
                "function": {
                    "name": _name(fn.get("name")),
                    "arguments": _arguments(fn.get("arguments")) or "{}",
                },
            }
        )
    return calls


def _message(raw: Any) -> ChatMessage:
    """An assistant message from a server's JSON, filling gaps servers are known to leave;
    _Malformed when it is not one."""
    if not isinstance(raw, dict):
        raise _Malformed("no message object")
    content = _content(raw.get("content"))
    calls = _tool_calls(raw["tool_calls"]) if raw.get("tool_calls") else []
    try:
        return ChatMessage.model_validate(
            {"role": "assistant", "content": content, "tool_calls": calls or None}
        )
    except ValidationError as exc:  # not expected after the checks above; still a format error
        raise _Malformed(str(exc).splitlines()[0]) from None


def _wire_usage(raw: Any) -> WireUsage | None:
    """The usage a server reported; fields that are not counts (negative, fractional, past
    what a database column holds, booleans) are dropped, so the call is estimated instead."""
    if not isinstance(raw, dict):
        return None
    try:
        return WireUsage.model_validate(raw)
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    try:
        return WireUsage.model_validate({k: v for k, v in raw.items() if k not in bad})
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
        except (ValueError, RecursionError):
            raise FormatProblem("a stream event is not JSON", data) from None
        if not isinstance(chunk, dict) or "error" in chunk:
            raise FormatProblem("the stream carried an error or a non-object event", data)
        self.usage = _wire_usage(chunk.get("usage")) or self.usage
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise FormatProblem("a stream event's choices are not a list", data)
        produced = False
        try:
            for choice in choices:
                if isinstance(choice, dict):
                    produced = self._choice(choice) or produced
        except _Malformed as exc:
            raise FormatProblem(f"a stream event is malformed: {exc}", data) from None
        return produced

    def _choice(self, choice: dict[str, Any]) -> bool:
        self.finish_reason = _finish(choice.get("finish_reason")) or self.finish_reason
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _Malformed("delta is not an object")
        produced = False
        text = _content(delta.get("content"))
        if text:
            self._content.append(text)
            produced = True
        if delta.get("reasoning_content"):
            produced = True
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _Malformed("tool_calls is not a list")
        for position, call in enumerate(calls):
            self._tool_delta(call, position)
            produced = True
        return produced

    def _tool_delta(self, delta: Any, position: int) -> None:
        if not isinstance(delta, dict):
            raise _Malformed("a tool-call delta is not an object")
        index = delta.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            raise _Malformed("a tool-call delta's index is not a number")
        fn = delta.get("function") or {}
        if not isinstance(fn, dict):
            raise _Malformed("a tool call's function is not an object")
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if isinstance(delta.get("id"), str) and delta["id"]:
            call["id"] = delta["id"]
        name = _name(fn.get("name"))
        if name and name != call["name"]:
            call["name"] = (call["name"] + name)[:MAX_NAME_CHARS]
        call["arguments"] += _arguments(fn.get("arguments"))

    def result(self) -> tuple[ChatMessage, str | None, WireUsage | None]:
        """The assembled message, finish reason and usage (if the server sent it); raises
        FormatProblem when the pieces do not make a message."""
        calls = [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self._calls.items())
        ]
        raw = {"content": "".join(self._content) or None, "tool_calls": calls}
        try:
            message = _message(raw)
        except _Malformed as exc:
            raise FormatProblem(f"the streamed message is malformed: {exc}", str(raw)) from None
        return message, self.finish_reason, self.usage
