"""Token estimates for when no tokenizer is at hand (budget reservations, missing usage).

The heuristic, chosen to err on the high side because the ledger reserves budget with it:

- text: one token per 4 ASCII characters (rounded up), plus one token per non-ASCII
  character (CJK scripts run near one token per character; accented Latin text is
  overestimated a little);
- a message: its text (content, name, tool-call names and arguments, tool-call id) plus
  ``MESSAGE_OVERHEAD`` tokens for the role and the chat template's separators;
- a request: its messages, plus ``REPLY_PRIMING`` tokens, plus the JSON of its tool schemas and
  of its ``response_format`` (servers render both into the prompt).

No tokenizer is used: the served models differ. Instead :class:`Calibration` learns, per
model, how its server's counts compare with these estimates, from the usage every answer
reports. Estimates are marked ``estimated=True`` wherever they stand in for a server's own
count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..messages import ChatMessage, ChatRequest, ToolSpec

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


def estimate_tools_tokens(tools: Sequence[ToolSpec]) -> int:
    """Estimated tokens of tool schemas as a server renders them into the prompt."""
    return _json_tokens([t.model_dump() for t in tools])


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Estimated prompt tokens of ``request``: messages, tool schemas and response format."""
    total = REPLY_PRIMING + sum(estimate_message_tokens(m) for m in request.messages)
    if request.tools:
        total += estimate_tools_tokens(request.tools)
    if request.response_format:
        total += _json_tokens(request.response_format)
    return total


@dataclass
class _Learned:
    ratio: float = 1.0  # reported / estimated, a running mean
    deviation: float = 0.0  # its running mean absolute deviation
    samples: int = 0
    window: int | None = None  # the context window an overflow error revealed


class Calibration:
    """Per model, how its server counts tokens against :func:`estimate_tokens`, learned
    from the calls it answers (reported prompt tokens / the estimate of the same prompt),
    and the windows overflow errors revealed.

    :meth:`estimate` scales an estimate by the running ratio plus twice its running mean
    deviation (so it errs high, as budgets need), never below the raw estimate times
    ``FLOOR``; a model not seen yet gets the raw estimate. The figures survive restarts
    through ``store.model_stats`` (:meth:`take_changes` / :meth:`load`), saved by the
    worker's maintenance.
    """

    WEIGHT = 0.25  # how much each new call moves the running figures, after the first few
    FLOOR = 0.5

    def __init__(self) -> None:
        self._models: dict[str, _Learned] = {}
        self.changed: set[str] = set()

    def load(self, stats: Mapping[str, tuple[float, int, int | None]]) -> None:
        """Figures stored by :meth:`take_changes`; the spread of the ratio is not stored, so
        it starts at 5% (the estimates err 10% high until calls narrow it)."""
        for model, (ratio, samples, window) in stats.items():
            self._models[model] = _Learned(ratio, ratio * 0.05, samples, window)

    def take_changes(self) -> dict[str, tuple[float, int, int | None]]:
        """The figures of the models that learned something since the last call, to store:
        ratio, samples, window (a restart adds a margin of its own: see :meth:`load`)."""
        out = {}
        for m in sorted(self.changed & set(self._models)):
            known = self._models[m]
            out[m] = (known.ratio, known.samples, known.window)
        self.changed.clear()
        return out

    def multiplier(self, model: str) -> float:
        known = self._models.get(model)
        if known is None or not known.samples:
            return 1.0
        return max(known.ratio + 2 * known.deviation, self.FLOOR)

    def estimate(self, model: str, estimated: int) -> int:
        """``estimated`` tokens as ``model``'s server will likely count them, erring high."""
        return math.ceil(estimated * self.multiplier(model))

    def observe(self, model: str, estimated: int, reported: int) -> None:
        """A call's prompt: ``estimated`` by :func:`estimate_prompt_tokens`, ``reported`` by
        the server."""
        if estimated <= 0 or reported <= 0:
            return
        known = self._models.setdefault(model, _Learned())
        seen = reported / estimated
        weight = max(1 / (known.samples + 1), self.WEIGHT)
        if not known.samples:
            known.ratio, known.deviation = seen, 0.0
        else:
            known.deviation += (abs(seen - known.ratio) - known.deviation) * weight
            known.ratio += (seen - known.ratio) * weight
        known.samples += 1
        self.changed.add(model)

    def learn_window(self, model: str, window: int) -> None:
        """An overflow error said ``model``'s window is ``window`` tokens."""
        known = self._models.setdefault(model, _Learned())
        if known.window is None or window < known.window:
            known.window = window
            self.changed.add(model)

    def window(self, model: str) -> int | None:
        known = self._models.get(model)
        return known.window if known else None
