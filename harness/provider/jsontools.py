"""Tool calls for models without native tool calling (``tools = "json"`` in a model's config).

The request's tools become a JSON schema the server enforces through ``response_format``;
the reply, a JSON document, becomes a normal assistant message again. The shape:

- an answer: ``{"answer": "..."}`` (or ``{"answer": <the caller's schema>}`` when the request
  carried its own ``json_schema`` response format);
- a tool call: ``{"tool": "<name>", "arguments": {...}}``, one branch per tool with the tool's
  parameter schema, joined with ``anyOf``;
- several tool calls, when the request sets ``min_tool_calls`` above one:
  ``{"tool_calls": [<tool call>, ...]}`` with at least that many items (the way a model that
  cannot emit parallel calls natively still fans out in one step).

``tool_choice`` narrows the branches: ``"required"`` drops the answer, a named function keeps
only that tool, ``"none"`` drops the tools (the reply is then ``{"answer": "..."}``, or follows
the caller's own response format and is not decoded: see :func:`is_encoded`).
Because such models cannot read ``tool`` messages or ``tool_calls`` either, the history is
rewritten into plain text: earlier calls become the JSON the model would have written, results
become user messages. All functions here are pure.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from ..messages import ChatMessage, ChatRequest, FunctionCall, ToolCall, ToolSpec

SCHEMA_NAME = "harness_reply"  # marks a response format made here


def new_call_id() -> str:
    """A fresh tool-call id in the style servers use."""
    return "call_" + uuid.uuid4().hex[:24]


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _tool_branch(tool: ToolSpec) -> dict[str, Any]:
    fn = tool.function
    branch = _object(
        {"tool": {"const": fn.name}, "arguments": fn.parameters}, ["tool", "arguments"]
    )
    if fn.description:
        branch["description"] = fn.description
    return branch


def _chosen_tools(
    tools: list[ToolSpec], tool_choice: str | dict[str, Any] | None
) -> tuple[list[ToolSpec], bool]:
    """The tools the model may call and whether it may answer instead."""
    if tool_choice is None or tool_choice == "auto":
        return tools, True
    if tool_choice == "none":
        return [], True
    if tool_choice in ("required", "any"):
        return tools, False
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t.function.name == name]
        if not chosen:
            raise ValueError(f"tool_choice names an unknown tool {name!r}")
        return chosen, False
    raise ValueError(f"unsupported tool_choice {tool_choice!r}")


def answer_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema the caller asked answers to follow, if its response format carries one."""
    if not response_format:
        return None
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    return None


def reply_schema(
    tools: list[ToolSpec],
    tool_choice: str | dict[str, Any] | None = None,
    answer: dict[str, Any] | None = None,
    min_calls: int | None = None,
) -> dict[str, Any] | None:
    """The JSON schema of a reply, or None when no tool may be called (then the caller's
    own response format, if any, applies unchanged)."""
    chosen, may_answer = _chosen_tools(tools, tool_choice)
    if not chosen:
        return None
    branches = [_tool_branch(t) for t in chosen]
    if min_calls and min_calls > 1:
        items = branches[0] if len(branches) == 1 else {"anyOf": branches}
        # a few more than required, never unbounded: small models fill whatever they may
        calls = {"type": "array", "items": items, "minItems": min_calls, "maxItems": min_calls + 2}
        return _object({"tool_calls": calls}, ["tool_calls"])
    if may_answer:
        branches.insert(0, _object({"answer": answer or {"type": "string"}}, ["answer"]))
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """A ``response_format`` request field enforcing ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema}}


def wire_format(fmt: dict[str, Any], style: str) -> dict[str, Any]:
    """``fmt`` as the server expects it: unchanged for ``json_schema`` servers (OpenAI,
    vLLM, llama.cpp's own server); ``{"type": "json_object", "schema": ...}`` for
    llama-cpp-python's server, which enforces that schema with a grammar."""
    if style != "json_object" or fmt.get("type") != "json_schema":
        return fmt
    schema = (fmt.get("json_schema") or {}).get("schema")
    return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}


def is_encoded(request: ChatRequest) -> bool:
    """True when ``request`` carries a reply schema made by :func:`encode_request`."""
    fmt = request.response_format or {}
    return (fmt.get("json_schema") or {}).get("name") == SCHEMA_NAME


def instructions(
    tools: list[ToolSpec], tool_choice: str | dict[str, Any] | None, min_calls: int | None = None
) -> str:
    """The system-prompt text telling the model which tools exist and how to call them."""
    chosen, may_answer = _chosen_tools(tools, tool_choice)
    if not chosen:
        return ""
    lines = [
        "Reply with one JSON object and nothing else.",
        'To call a tool: {"tool": "<tool name>", "arguments": {<arguments>}}.',
    ]
    if min_calls and min_calls > 1:
        lines[1] = (
            f"Call at least {min_calls} tools now, in one reply: "
            '{"tool_calls": [{"tool": "<tool name>", "arguments": {<arguments>}}, ...]}.'
        )
    elif may_answer:
        lines.append('To answer without a tool: {"answer": <your answer>}.')
    else:
        lines.append("You must call a tool now.")
    lines.append("Tools:")
    for tool in chosen:
        fn = tool.function
        params = json.dumps(fn.parameters, separators=(",", ":"))
        lines.append(f"- {fn.name}: {fn.description or '(no description)'} Arguments: {params}")
    return "\n".join(lines)


def _call_json(call: ToolCall) -> str:
    try:
        arguments: Any = json.loads(call.function.arguments or "{}")
    except ValueError:
        arguments = call.function.arguments
    return json.dumps({"tool": call.function.name, "arguments": arguments}, ensure_ascii=False)


def flatten_history(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Rewrite tool calls and tool results as plain assistant and user text."""
    names: dict[str, str] = {}
    out: list[ChatMessage] = []
    for msg in messages:
        if msg.role == "assistant" and msg.tool_calls:
            for call in msg.tool_calls:
                names[call.id] = call.function.name
            parts = [msg.content] if msg.content else []
            parts += [_call_json(call) for call in msg.tool_calls]
            out.append(ChatMessage(role="assistant", content="\n".join(parts)))
        elif msg.role == "tool":
            name = msg.name or names.get(msg.tool_call_id or "", "tool")
            out.append(ChatMessage(role="user", content=f"Result of {name}:\n{msg.content or ''}"))
        else:
            out.append(msg)
    return out


def _with_instructions(messages: list[ChatMessage], text: str) -> list[ChatMessage]:
    if not text:
        return messages
    if messages and messages[0].role == "system":
        first = messages[0]
        merged = f"{first.content}\n\n{text}" if first.content else text
        return [first.model_copy(update={"content": merged}), *messages[1:]]
    return [ChatMessage(role="system", content=text), *messages]


def encode_request(request: ChatRequest) -> ChatRequest:
    """``request`` with its tools moved into a ``response_format`` schema and the prompt.

    When no tool may be called, the caller set no format of its own and the history holds
    tool calls, the reply is still ``{"answer": "..."}``: a small model otherwise imitates the
    tool-call JSON it sees in the flattened history instead of answering.
    """
    used_tools = any(m.tool_calls or m.role == "tool" for m in request.messages)
    if not (request.tools or request.tool_choice or used_tools):
        return request  # nothing to move: no tools offered, none in the history
    tools = request.tools or []
    answer = answer_schema(request.response_format)
    schema = reply_schema(tools, request.tool_choice, answer, request.min_tool_calls)
    text = instructions(tools, request.tool_choice, request.min_tool_calls)
    if schema is None and answer is None and used_tools:
        schema = _object({"answer": {"type": "string"}}, ["answer"])
        text = 'Reply with one JSON object and nothing else: {"answer": "<your answer>"}.'
    return request.model_copy(
        update={
            "messages": _with_instructions(flatten_history(request.messages), text),
            "tools": None,
            "tool_choice": None,
            "response_format": response_format(schema) if schema else request.response_format,
        }
    )


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```"):
        text = text[3:-3]
        text = text.removeprefix("json")
    return text.strip()


def decode_reply(
    message: ChatMessage, *, new_id: Callable[[], str] = new_call_id, strict: bool = False
) -> ChatMessage:
    """The assistant message a JSON reply stands for: tool call(s), an answer, or as is.

    Use it only on replies to requests for which :func:`is_encoded` holds. A reply that is
    not one of the JSON shapes (the server ignored the schema, or the reply was cut at
    ``max_tokens``) is returned unchanged as text, or with ``strict`` raises ValueError;
    native ``tool_calls`` are kept as they are.
    """
    if message.tool_calls:
        return message
    try:
        # strict=False: a control character (a raw newline) inside a string, which grammars
        # of local servers let through, is text, not a broken reply
        data = json.loads(_strip_fences(message.content or ""), strict=False)
    except ValueError:
        if strict:
            raise ValueError("not valid JSON (cut short?)") from None
        return message
    if not isinstance(data, dict):
        if strict:
            raise ValueError("not a JSON object")
        return message
    many = data.get("tool_calls")
    if isinstance(many, list) and many and all(isinstance(c, dict) for c in many):
        calls = [_tool_call(c, new_id) for c in many if isinstance(c.get("tool"), str)]
        if calls:
            return ChatMessage(role="assistant", content=None, tool_calls=calls)
    tool = data.get("tool")
    if isinstance(tool, str) and tool:
        return ChatMessage(role="assistant", content=None, tool_calls=[_tool_call(data, new_id)])
    if "answer" in data:
        answer = data["answer"]
        text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        return ChatMessage(role="assistant", content=text)
    if strict:
        raise ValueError("neither an answer nor a tool call")
    return message


def _tool_call(data: dict[str, Any], new_id: Callable[[], str]) -> ToolCall:
    arguments = data.get("arguments")
    return ToolCall(
        id=new_id(),
        function=FunctionCall(
            name=str(data["tool"]),
            arguments=json.dumps({} if arguments is None else arguments, ensure_ascii=False),
        ),
    )
