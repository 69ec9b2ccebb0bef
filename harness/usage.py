"""Token usage, call records and budgets: what one model call cost, how it went, what is allowed."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CallOutcome(StrEnum):
    OK = "ok"
    ERROR = "error"  # the server answered with an error or a malformed body
    UNSETTLED = "unsettled"  # in flight when the process died; reserved estimate recorded


@dataclass(frozen=True)
class Usage:
    """Tokens of one call. ``estimated`` is True when the server sent no usage."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True)
class CallRecord:
    """One attempt that reached a server. The ledger stores one row per record."""

    provider: str
    model: str  # the configured model name (not the wire id)
    outcome: CallOutcome
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempt: int = 1
    status: int | None = None
    error: str | None = None
    kind: str = "step"  # what the call was for: "step", or "compaction" (a context summary)


@dataclass(frozen=True)
class Budget:
    """Daily limits for one agent (or the workspace). None means unlimited."""

    tokens: int | None = None
    cost_usd: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.tokens is None and self.cost_usd is None
