"""Recognising a server's "the prompt is longer than my context window" error.

Matched on the error body only (never on what the conversation says), in the shapes servers
write it: OpenAI's ``code: context_length_exceeded`` (llama-cpp-python's server says the
same), llama.cpp's server's ``type: exceed_context_size_error`` with ``n_prompt_tokens`` and
``n_ctx``, vLLM's ``maximum context length is N tokens`` message. The window is read from
the body when it says (``n_ctx``, or the message's figure).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ProviderError

__all__ = ["Overflow", "overflow"]

_LIMIT = re.compile(r"maximum context length is (\d+)")


@dataclass(frozen=True)
class Overflow:
    """The server refused the prompt as too long; ``window`` when it said its size."""

    window: int | None
    prompt: int | None = None


def overflow(error: BaseException) -> Overflow | None:
    """The overflow ``error`` reports, or None when it is another failure."""
    if not isinstance(error, ProviderError) or error.status not in (400, 413, 422):
        return None
    body = error.body or ""
    detail = _error_object(body)
    code, kind = str(detail.get("code", "")), str(detail.get("type", ""))
    message = str(detail.get("message", "")) or body
    found = _LIMIT.search(message) or _LIMIT.search(body)
    window = int(found.group(1)) if found else None
    if kind == "exceed_context_size_error" or "exceed_context_size_error" in body:
        n_ctx, prompt = detail.get("n_ctx"), detail.get("n_prompt_tokens")
        return Overflow(_int(n_ctx) or window, _int(prompt))
    if code == "context_length_exceeded" or "context_length_exceeded" in body:
        return Overflow(window)
    if found and ("BadRequestError" in kind or "context" in message.lower()):
        return Overflow(window)  # vLLM's shape
    return None


def _error_object(body: str) -> dict[str, Any]:
    """The error object of a JSON error body (OpenAI's ``{"error": {...}}`` or vLLM's flat
    one); {} when the body is not JSON (or was cut short)."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    inner = data.get("error")
    return inner if isinstance(inner, dict) else data


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None
