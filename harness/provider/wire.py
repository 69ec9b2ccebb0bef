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
