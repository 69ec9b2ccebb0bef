"""The provider seam: ``Provider.complete(request) -> Completion``, one small interface.

:class:`~harness.provider.openai.OpenAIProvider` implements it for every OpenAI-compatible
endpoint; :class:`harness.testing.ScriptedProvider` is the scripted double for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..messages import ChatMessage, ChatRequest
from ..usage import CallRecord, Usage

__all__ = ["Attempts", "Completion", "Provider"]


@dataclass(frozen=True)
class Completion:
    """A model's answer to one request."""

    message: ChatMessage  # the assistant message (content and/or tool_calls)
    finish_reason: str | None
    usage: Usage  # usage of the attempt that succeeded
    model: str  # configured model NAME that answered (may be a fallback)
    records: list[CallRecord]  # one per attempt that reached a server, failed ones too


class Attempts(Protocol):
    """What a caller hears about each attempt of one completion: the ledger's hooks.

    ``before(model, failed, prompt_tokens=, max_tokens=)`` is awaited before every attempt,
    the first included, with the failed attempts so far that reached a server (records), the
    estimated prompt of what is sent and its ``max_tokens``, so the caller can record the
    failures and reserve budget for the next attempt. It returns the ``max_tokens`` the attempt
    may use (at most the one asked; the provider sends that), and may raise a ControlSignal
    (e.g. BudgetExceeded), which stops the completion with the attempts made so far attached
    as ``signal.records``.
    ``sending()`` is called when an attempt leaves this process (after pacing and the
    concurrency limit): until then, a cancelled call cannot have reached a server.
    """

    async def before(
        self, model: str, failed: Sequence[CallRecord], *, prompt_tokens: int, max_tokens: int
    ) -> int: ...

    def sending(self) -> None: ...


class Provider(Protocol):
    """Anything that answers chat requests: the HTTP client, or a scripted double."""

    async def complete(
        self, request: ChatRequest, *, attempts: Attempts | None = None
    ) -> Completion: ...

    async def aclose(self) -> None: ...
