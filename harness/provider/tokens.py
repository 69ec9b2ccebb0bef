"""Token estimates for when no tokenizer is at hand (budget reservations, missing usage).

The heuristic, chosen to err on the high side because the ledger reserves budget with it:

- text: one token per digit and per ASCII punctuation mark (tokenizers split numbers, JSON,
  URLs and tables finely: counting them as plain text undercounts such text 2.5-3.5x), one
  per 4 other ASCII characters (rounded up), plus one per non-ASCII character (CJK scripts
  run near one token per character; accented Latin text is overestimated a little);
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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..messages import ChatMessage, ChatRequest, ToolSpec

MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


_DENSE = re.compile(r"[!-@\[-`{-~]")  # ASCII digits and punctuation: a token each, or near


def estimate_tokens(text: str) -> int:
    """Estimated tokens in ``text``: one per digit or ASCII punctuation mark, one per 4 of
    the other ASCII characters (rounded up), one per non-ASCII character; 0 for ""."""
    if not text:
        return 0
    dense = len(_DENSE.findall(text))
    if text.isascii():  # the common case, without a per-character loop
        return dense - (-(len(text) - dense) // 4)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return dense + math.ceil((ascii_chars - dense) / 4) + (len(text) - ascii_chars)


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


WHOLE, NEW = "whole", "new"  # what an estimate covers: a whole prompt, or what was appended

# a model's stored figures: whole-prompt ratio and samples, appended-part ratio and samples,
# the window an overflow error revealed
Stats = tuple[float, int, float, int, int | None]


@dataclass
class _Ratio:
    """A running ratio reported / estimated, and its running mean absolute deviation."""

    ratio: float = 1.0
    deviation: float = 0.0
    samples: int = 0

    def learn(self, seen: float, weight: float) -> None:
        weight = max(1 / (self.samples + 1), weight)
        if not self.samples:
            self.ratio, self.deviation = seen, 0.0
        else:
            self.deviation += (abs(seen - self.ratio) - self.deviation) * weight
            self.ratio += (seen - self.ratio) * weight
        self.samples += 1


@dataclass
class _Learned:
    whole: _Ratio = field(default_factory=_Ratio)
    new: _Ratio = field(default_factory=_Ratio)
    window: int | None = None  # the context window an overflow error revealed


class Calibration:
    """Per model, how its server counts tokens against :func:`estimate_tokens`, learned
    from the calls it answers, and the windows overflow errors revealed.

    Two ratios, reported / estimated: of whole prompts (a task's first call, or its first
    after a compaction: the opening prompts of an agent are much alike), and of what a step
    appended to the previous prompt (tool results, mostly), measured as the server's count
    of this prompt minus its count of the previous prompt and answer. :meth:`estimate`
    scales an estimate by its ratio plus twice the ratio's running mean deviation (so it
    errs high, as budgets need), never below the raw estimate times ``FLOOR``; a model not
    seen yet gets the raw estimate, an appended part not seen yet the whole-prompt ratio.
    The figures survive restarts through ``store.model_stats`` (:meth:`take_changes` /
    :meth:`load`), saved by the worker's maintenance.
    """

    WEIGHT = 0.25  # how much each new call moves the running figures, after the first few
    FLOOR = 0.5

    def __init__(self) -> None:
        self._models: dict[str, _Learned] = {}
        self.changed: set[str] = set()

    def load(self, stats: Mapping[str, Stats]) -> None:
        """Figures stored by :meth:`take_changes`; the spread of a ratio is not stored, so
        it starts at 5% (the estimates err 10% high until calls narrow it)."""
        for model, (ratio, samples, new_ratio, new_samples, window) in stats.items():
            self._models[model] = _Learned(
                _Ratio(ratio, ratio * 0.05, samples),
                _Ratio(new_ratio, new_ratio * 0.05, new_samples),
                window,
            )

    def take_changes(self) -> dict[str, Stats]:
        """The figures of the models that learned something since the last call, to store
        (a restart adds a margin of its own: see :meth:`load`)."""
        out: dict[str, Stats] = {}
        for m in sorted(self.changed & set(self._models)):
            k = self._models[m]
            out[m] = (k.whole.ratio, k.whole.samples, k.new.ratio, k.new.samples, k.window)
        self.changed.clear()
        return out

    def multiplier(self, model: str, part: str = WHOLE) -> float:
        known = self._models.get(model)
        if known is None:
            return 1.0
        figures = known.new if part == NEW and known.new.samples else known.whole
        if not figures.samples:
            return 1.0
        return max(figures.ratio + 2 * figures.deviation, self.FLOOR)

    def estimate(self, model: str, estimated: int, part: str = WHOLE) -> int:
        """``estimated`` tokens (of a whole prompt, or of a ``NEW`` part appended to one) as
        ``model``'s server will likely count them, erring high."""
        return math.ceil(estimated * self.multiplier(model, part))

    def observe(self, model: str, estimated: int, reported: int, part: str = WHOLE) -> None:
        """A call's prompt (or its ``NEW`` part): ``estimated`` by :func:`estimate_tokens`
        and the rest, ``reported`` by the server."""
        if estimated <= 0 or reported <= 0:
            return
        known = self._models.setdefault(model, _Learned())
        (known.new if part == NEW else known.whole).learn(reported / estimated, self.WEIGHT)
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
