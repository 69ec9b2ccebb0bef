"""How much of a model's window a request takes: its estimate, and the room it has.

A request's prompt is estimated as the server's own count of the task's previous prompt plus
its completion, plus the calibrated estimate of what was appended since (so most of it is an
exact count, reported by the server, and only the new messages are estimated); when the view
changed since (a compaction), or for a task's first call, the whole request is estimated and
calibrated (``provider.tokens.Calibration``: a ratio for whole prompts, one for appended
parts, each learned from its kind of call). Each message is estimated once.

The window is the model's (``provider.catalogue``: the server, the config, the catalogue),
or the smaller one an overflow error revealed; a request has room for ``window - max_tokens -
margin`` prompt tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..messages import ChatMessage, ToolSpec
from ..provider.tokens import (
    MESSAGE_OVERHEAD,
    NEW,
    REPLY_PRIMING,
    Calibration,
    estimate_message_tokens,
    estimate_tools_tokens,
)
from ..settings import Settings

__all__ = ["Estimate", "Estimator", "margin", "window_of"]


def window_of(settings: Settings, calibration: Calibration, model: str) -> int:
    """``model``'s context window: the configured or reported one, or a smaller one learned."""
    configured = settings.models[model].context_window or 0
    learned = calibration.window(model)
    return min(configured, learned) if learned else configured


def margin(window: int) -> int:
    """Tokens kept free in every request (chat-template tokens the estimate cannot see)."""
    return max(32, window // 50)


@dataclass(frozen=True)
class Estimate:
    tokens: int  # what the server will likely count (errs high)
    raw: int  # the plain estimate of the whole request
    base: int = 0  # the server's count of the previous prompt and answer, when built on it
    new: int = 0  # then: the plain estimate of what was appended since


@dataclass
class _Last:
    model: str
    version: int
    tools: tuple[str, ...]
    sent: int  # messages in that request
    reported: int  # the server's count of its prompt
    completion: int


class Estimator:
    """One task's prompt estimates (see the module docstring)."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self._tokens: dict[int, int] = {}  # id(message) -> its estimate, for this view
        self._version = -1
        self._last: _Last | None = None

    def message_tokens(self, message: ChatMessage) -> int:
        """``message``'s estimate (each message is estimated once per view)."""
        return self._of(message)

    def _of(self, message: ChatMessage) -> int:
        key = id(message)
        found = self._tokens.get(key)
        if found is None:
            found = self._tokens[key] = estimate_message_tokens(message)
        return found

    def estimate(
        self,
        model: str,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None,
        version: int,
    ) -> Estimate:
        if version != self._version:  # a new view: its derived messages are new objects
            self._tokens, self._version = {}, version
        tools_raw = estimate_tools_tokens(tools) if tools else 0
        raw = REPLY_PRIMING + tools_raw + sum(self._of(m) for m in messages)
        last = self._last
        names = tuple(t.function.name for t in tools or [])
        if last is None or (last.model, last.version, last.tools) != (model, version, names):
            return Estimate(self.calibration.estimate(model, raw), raw)
        new = sum(self._of(m) for m in messages[last.sent + 1 :]) + MESSAGE_OVERHEAD
        base = last.reported + last.completion
        return Estimate(base + self.calibration.estimate(model, new, NEW), raw, base, new)

    def observed(
        self,
        model: str,
        version: int,
        tools: list[ToolSpec] | None,
        sent: int,
        estimate: Estimate,
        reported: int,
        completion: int,
    ) -> None:
        """A call answered: ``reported`` prompt tokens (the server's count; 0 when it sent
        none) for a request of ``sent`` messages estimated as ``estimate``."""
        if reported <= 0:
            self._last = None
            return
        if estimate.base:  # what was appended, as the server counted it
            self.calibration.observe(model, estimate.new, reported - estimate.base, NEW)
        else:
            self.calibration.observe(model, estimate.raw, reported)
        names = tuple(t.function.name for t in tools or [])
        self._last = _Last(model, version, names, sent, reported, completion)


def chars_for(tokens: int) -> int:
    """About how many characters of plain text ``tokens`` tokens hold (errs low)."""
    return max(math.floor(tokens * 3), 256)
