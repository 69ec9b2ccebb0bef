"""The OpenAI chat-completions wire format as pydantic models.

Requests are strict (we build them); responses tolerate unknown fields (servers add their own).
Every text a message holds is storable (:func:`harness.scrub.storable`: no NUL, no lone
surrogate), whoever built it; token counts are whole numbers a database column holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from .scrub import storable

Role = Literal["system", "user", "assistant", "tool"]
Text = Annotated[str, AfterValidator(storable)]
# a token count as servers report it: a whole number (not a boolean, not 12.5) in 0..2^53
Count = Annotated[StrictInt, Field(ge=0, le=2**53)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Wire):
    name: Text
    arguments: Text = "{}"  # a JSON document, as sent by the server (may be invalid)


class ToolCall(_Wire):
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Wire):
    role: Role
    content: Text | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None
    name: Text | None = None

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


SENT_IF_SET = (
    "response_format",
    "max_tokens",
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
)


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
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
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
        for key in SENT_IF_SET:
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


class PromptTokensDetails(_Wire):
    cached_tokens: Count | None = None


class CompletionTokensDetails(_Wire):
    reasoning_tokens: Count | None = None


class WireUsage(_Wire):
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    total_tokens: Count | None = None
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
