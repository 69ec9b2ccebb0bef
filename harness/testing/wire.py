"""Bodies an OpenAI-compatible server sends, for tests that mock one (respx, MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["chat_completion", "chat_stream", "chat_stream_events"]


def _wire_calls(calls: Iterable[tuple[str, dict[str, Any] | str]]) -> list[dict[str, Any]]:
    out = []
    for index, (name, arguments) in enumerate(calls):
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        out.append(
            {
                "id": f"call_{index + 1}",
                "type": "function",
                "function": {"name": name, "arguments": raw},
            }
        )
    return out


def _wire_usage(usage: tuple[int, int] | dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None or isinstance(usage, dict):
        return usage
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(
    content: str | None = "ok",
    *,
    tool_calls: Iterable[tuple[str, dict[str, Any] | str]] = (),
    finish_reason: str | None = None,
    usage: tuple[int, int] | dict[str, Any] | None = (10, 5),
    model: str = "test-model",
) -> dict[str, Any]:
    """A non-streamed chat completion body as an OpenAI-compatible server sends it."""
    calls = _wire_calls(tool_calls)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
            }
        ],
    }
    if usage is not None:
        body["usage"] = _wire_usage(usage)
    return body


def _event(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": choices}


def chat_stream_events(
    pieces: Iterable[str] = ("o", "k"),
    *,
    tool_calls: Iterable[tuple[str, dict[str, Any] | str]] = (),
    finish_reason: str | None = "stop",
    usage: tuple[int, int] | dict[str, Any] | None = (10, 5),
    done: bool = True,
) -> list[bytes]:
    """The events of a streamed chat completion, one ``data:`` line each (SSE framing).

    Tool calls stream as OpenAI does: id and name first, then the arguments in two halves.
    ``finish_reason=None`` and ``done=False`` build a stream that was cut off.
    """
    events = [_event({"role": "assistant", "content": ""})]
    events += [_event({"content": piece}) for piece in pieces]
    for index, call in enumerate(_wire_calls(tool_calls)):
        fn, half = call["function"], len(call["function"]["arguments"]) // 2
        first = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": fn["name"], "arguments": ""},
        }
        events.append(_event({"tool_calls": [first]}))
        for part in (fn["arguments"][:half], fn["arguments"][half:]):
            events.append(
                _event({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            )
    if finish_reason is not None:
        events.append(_event({}, finish_reason))
    if usage is not None:
        events.append({**_event(None), "usage": _wire_usage(usage)})
    lines = [f"data: {json.dumps(event)}\n\n".encode() for event in events]
    return lines + ([b"data: [DONE]\n\n"] if done else [])


def chat_stream(
    pieces: Iterable[str] = ("o", "k"),
    **kwargs: Any,
) -> bytes:
    """A whole streamed chat completion body; see :func:`chat_stream_events`."""
    return b"".join(chat_stream_events(pieces, **kwargs))
