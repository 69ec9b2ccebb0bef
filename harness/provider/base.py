"""The provider seam: ``Provider.complete(request) -> Completion``, one small interface.

:class:`~harness.provider.openai.OpenAIProvider` implements it for every OpenAI-compatible
endpoint; :class:`harness.testing.ScriptedProvider` is the scripted double for tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..messages import ChatMessage, ChatRequest
from ..usage import CallRecord, Usage

__all__ = ["AttemptHook", "Completion", "Provider"]


@dataclass(frozen=True)
class Completion:
    """A model's answer to one request."""

    message: ChatMessage  # the assistant message (content and/or tool_calls)
    finish_reason: str | None
    usage: Usage  # usage of the attempt that succeeded
    model: str  # configured model NAME that answered (may be a fallback)
    records: list[CallRecord]  # one per attempt that reached a server, failed ones too


AttemptHook = Callable[[str, Sequence[CallRecord]], Awaitable[None]]
"""``before_attempt(model, attempts)``: awaited before every attempt after a completion's first
one (a retry or a fallback) with the failed attempts so far that reached a server, so a caller
can record them and reserve budget for the next; may raise a ControlSignal
(e.g. BudgetExceeded), which stops the completion with the attempts made so far attached as
``signal.records``."""


class Provider(Protocol):
    """Anything that answers chat requests: the HTTP client, or a scripted double."""

    async def complete(
        self, request: ChatRequest, *, before_attempt: AttemptHook | None = None
    ) -> Completion: ...

    async def aclose(self) -> None: ...
