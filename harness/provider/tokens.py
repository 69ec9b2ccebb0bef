"""Token estimates for when no tokenizer is at hand (budget reservations, missing usage).

The heuristic, chosen to err on the high side because the ledger reserves budget with it:

- text: one token per 4 ASCII characters (rounded up), plus one token per non-ASCII
  character (CJK scripts run near one token per character; accented Latin text is
  overestimated a little);
- a message: its text (content, name, tool-call names and arguments, tool-call id) plus
  ``MESSAGE_OVERHEAD`` tokens for the role and the chat template's separators;
- a request: its messages, plus ``REPLY_PRIMING`` tokens, plus the JSON of its tool schemas and
  of its ``response_format`` (servers render both into the prompt).

No exact tokenizer is used: the served models differ and none ships offline with harness.
Estimates are marked ``estimated=True`` wherever they stand in for a server's own count.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..messages import ChatMessage, ChatRequest

MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def estimate_tokens(text: str) -> int:
    """Estimated tokens in ``text``: ceil(ASCII chars / 4) + non-ASCII chars; 0 for ""."""
    if not text:
        return 0
    if text.isascii():  # the common case, without a per-character loop
        return -(-len(text) // 4)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once


def _json_tokens(value: Any) -> int:
    return estimate_tokens(_COMPACT.encode(value))


def estimate_message_tokens(message: ChatMessage) -> int:
    """Estimated tokens of one message as rendered in a prompt (overhead included)."""
    total = MESSAGE_OVERHEAD + estimate_tokens(message.content or "")
    total += estimate_tokens(message.name or "") + estimate_tokens(message.tool_call_id or "")
    for call in message.tool_calls or []:
        total += estimate_tokens(call.id) + estimate_tokens(call.function.name)
        total += estimate_tokens(call.function.arguments)
    return total


def estimate_completion_tokens(message: ChatMessage) -> int:
    """Estimated tokens a model generated for ``message`` (at least 1: it said something)."""
    total = estimate_tokens(message.content or "")
    for call in message.tool_calls or []:
        total += estimate_tokens(call.function.name) + estimate_tokens(call.function.arguments)
    return max(total, 1)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Estimated prompt tokens of ``request``: messages, tool schemas and response format."""
    total = REPLY_PRIMING + sum(estimate_message_tokens(m) for m in request.messages)
    if request.tools:
        total += _json_tokens([t.model_dump() for t in request.tools])
    if request.response_format:
        total += _json_tokens(request.response_format)
    return total
