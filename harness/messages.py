"""The OpenAI chat-completions wire format as pydantic models.

Requests are strict (we build them); responses tolerate unknown fields (servers add their own).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Wire):
    name: str
    arguments: str = "{}"  # a JSON document, as sent by the server (may be invalid)


class ToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Wire):
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def wire(self) -> dict[str, Any]:
        """The message as sent on the wire: no null fields, but an assistant's ``content``
        always, ``""`` beside tool calls (servers differ: llama-cpp-python refuses null and
        its templates fail on a missing key; an empty string is valid everywhere)."""
        data = self.model_dump(exclude_none=True)
        if self.role == "assistant" and "content" not in data:
            data["content"] = ""
        return data


class FunctionSpec(_Wire):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(_Wire):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatRequest(BaseModel):
    """What the loop asks of a model. ``model`` is the configured model *name*."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    stream: bool | None = None  # None: the provider's configured default
    # harness-only (never sent): the fewest tool calls the reply must make. Models served in
    # JSON mode (``tools = "json"``) get it as the schema's minItems; native ones ignore it.
    min_tool_calls: int | None = None
    # harness-only: the caller's estimate of the prompt (calibrated, see harness.context);
    # None: the provider estimates it
    prompt_estimate: int | None = None

    def payload(self, wire_model: str, *, stream: bool) -> dict[str, Any]:
        """The JSON body for ``POST /chat/completions``."""
        body: dict[str, Any] = {
            "model": wire_model,
            "messages": [m.wire() for m in self.messages],
        }
        if self.tools:
            body["tools"] = [t.model_dump() for t in self.tools]
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        for key in ("response_format", "max_tokens", "temperature", "seed", "stop"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


class PromptTokensDetails(_Wire):
    cached_tokens: int | None = None


class CompletionTokensDetails(_Wire):
    reasoning_tokens: int | None = None


class WireUsage(_Wire):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class Choice(_Wire):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatResponse(_Wire):
    id: str | None = None
    object: str | None = None
    model: str | None = None
    choices: list[Choice]
    usage: WireUsage | None = None
