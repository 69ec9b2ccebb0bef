"""One task's context window: what it sends, whether that fits, and making it fit.

Before every call the request is estimated (``window``) against the room the model's window
leaves (``window - max_tokens - margin``). When it does not fit, cheap measures come first
and model calls last, each recorded once and in one go (``view``), so the prompt stays
append-only between two compactions and they come rarely, in chunks, down to
``LOW_WATER`` of the window:

1. large results never enter whole: a tool or sub-task result longer than its share of the
   window is kept as an artifact and enters as its head and a pointer (``read_artifact``);
2. masking: the results of turns older than the most recent ``limits.keep_recent_turns``
   become one-line stubs (their text kept as artifacts);
3. a summary of the oldest turns (the system prompt, the task and the recent turns stay as
   they are), written by the agent's model or ``limits.compaction_model``; the call is metered
   like any (kind ``compaction``, the agent's budget) and recorded with its ledger row;
4. if the recent turns alone do not fit, the answer's ``max_tokens`` shrinks to the room
   left, never below ``budgets.min_output_tokens``; below that the task fails, saying so.

A server that refuses a prompt as too long (``overflow``) teaches the model's real window;
the task compacts to it and tries again once. A model whose window is unknown (no server
report, config or catalogue entry) is not fitted until an overflow error reveals it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import structlog

from .. import steps
from ..agents import AgentSpec
from ..errors import ControlSignal, ProviderError, RunFailed
from ..messages import ChatMessage, ChatRequest, ToolCall
from ..provider.base import Completion
from ..provider.tokens import estimate_prompt_tokens
from ..runtime import Runtime
from ..steps import Reservation, State
from ..store.compactions import MASK, SUMMARY, Compaction
from ..store.queue import Lease
from ..store.transcripts import StoredMessage
from ..usage import CallRecord
from .overflow import Overflow
from .view import OPENING, View, turns
from .window import Estimate, Estimator, chars_for, margin, window_of

__all__ = ["COMPACTION", "TaskContext"]

log = structlog.get_logger("harness.context")

COMPACTION = "compaction"  # the ledger's kind for a summary's call
LOW_WATER = 0.5  # a compaction brings the prompt down to this share of the window
RESULT_SHARE = 0.25  # the most of the window one result's head may take
MASK_MIN_CHARS = 200  # shorter results are not worth a stub
POINTER = "read_artifact(artifact_id="  # how a cut result names the rest
SUMMARY_SHARE = 0.125  # a summary's max_tokens, as a share of the window
SUMMARISE = (
    "You compact the working memory of an AI agent. Summarise the work below so the agent "
    "can carry on without it: the facts found (with figures, names and sources), the "
    "decisions made, what each tool call returned that still matters (artifact ids "
    "included), and what is still open. Be dense and exact; no preamble."
)


class TaskContext:
    """The context of one task run by one runner (see the module docstring)."""

    def __init__(
        self, rt: Runtime, lease: Lease, agent: AgentSpec, transcript: list[StoredMessage],
        state: State,
    ) -> None:  # fmt: skip
        self.rt, self.lease, self.agent = rt, lease, agent
        self.transcript = transcript
        self.view = View(transcript, list(state.compactions))
        self.estimator = Estimator(rt.calibration)
        self._last: Estimate | None = None
        # whether a result of this task is an artifact (then ``read_artifact`` is offered)
        self.artifacts = any(c.kind == MASK for c in self.view.compactions) or any(
            POINTER in (sm.message.content or "") for sm in transcript if sm.message.role == "tool"
        )

    # -- what a request may hold -------------------------------------------------------------

    def window(self, model: str) -> int:
        return window_of(self.rt.settings, self.rt.calibration, model)

    def result_cap(self, model: str) -> int:
        """The most characters of one result that enter the transcript."""
        cap, window = self.rt.settings.limits.tool_output_chars, self.window(model)
        return min(cap, chars_for(int(window * RESULT_SHARE))) if window else cap

    async def keep(self, call: ToolCall, content: str, model: str) -> str:
        """What the transcript gets for a result: itself when short enough, else its head
        and a pointer to the whole (an artifact of the run)."""
        cap = self.result_cap(model)
        if len(content) <= cap:
            return content
        name = call.function.name
        artifact = await steps.keep_artifact(self.rt.store, self.lease, call.id, name, content)
        self.artifacts = True

        def pointer(at: int) -> str:
            return (
                f"\n[... {len(content) - at:,} more characters: the whole result is artifact "
                f"{artifact}; {POINTER}{artifact}, offset={at}) reads on]"
            )

        at = max(cap - len(pointer(cap)), 0)
        while at and at + len(pointer(at)) > cap:  # the figures may have grown a digit
            at -= 1
        return content[:at] + pointer(at)

    # -- fitting a request -------------------------------------------------------------------

    async def fit(self, request: ChatRequest) -> ChatRequest:
        """``request`` (built from :meth:`messages`) made to fit its model's window, with its
        prompt estimate attached; RunFailed when it cannot."""
        model, asked = request.model, request.max_tokens or 0
        window = self.window(model)
        estimate = self._estimate(request)
        self._last = estimate
        if not window:  # unknown until the server says (an overflow error teaches it)
            return request.model_copy(update={"prompt_estimate": estimate.tokens})
        if estimate.tokens + asked + margin(window) > window:
            await self._compact(model, int(window * LOW_WATER))
            request = request.model_copy(update={"messages": list(self.view.messages())})
            estimate = self._estimate(request)
        room = window - estimate.tokens - margin(window)
        least = min(asked, self.rt.settings.budgets.min_output_tokens)
        if room < least:
            raise RunFailed(
                f"the context of agent {self.agent.name!r} does not fit model {model!r}'s "
                f"window of {window:,} tokens: about {estimate.tokens:,} tokens are left after "
                "compacting (the system prompt, the task and the most recent turns); give it "
                "a model with a larger window, or lower limits.keep_recent_turns"
            )
        self._last = estimate
        return request.model_copy(
            update={"max_tokens": min(asked, room) or None, "prompt_estimate": estimate.tokens}
        )

    def messages(self) -> list[ChatMessage]:
        return self.view.messages()

    def _estimate(self, request: ChatRequest) -> Estimate:
        return self.estimator.estimate(
            request.model, request.messages, request.tools, self.view.version
        )

    def answered(self, request: ChatRequest, completion: Completion) -> None:
        """Learn from the answer: the server's count of the prompt just sent."""
        if self._last is None:
            return
        usage = completion.usage
        reported = 0 if usage.estimated else usage.prompt_tokens
        self.estimator.observed(
            completion.model,
            self.view.version,
            request.tools,
            len(request.messages),
            self._last,
            reported,
            usage.completion_tokens,
        )

    async def recover(self, request: ChatRequest, found: Overflow) -> None:
        """The server refused ``request`` as too long: learn its window, compact to it."""
        estimate = self._last.tokens if self._last else 0
        learned = found.window or int(estimate * 0.9)
        if learned:
            self.rt.calibration.learn_window(request.model, learned)
        log.warning("context_overflow", model=request.model, window=learned, estimate=estimate)
        await self._compact(request.model, int(self.window(request.model) * LOW_WATER))

    # -- compacting ------------------------------------------------------------------------------

    async def _compact(self, model: str, target: int) -> None:
        """Mask old results, then summarise the oldest turns, until the prompt is about
        ``target`` tokens (or nothing more can go)."""
        recent = self._recent_start(model, target)
        if await self._mask(recent) and self._view_tokens(model) <= target:
            return
        await self._summarise(model, recent)

    def _recent_start(self, model: str, target: int) -> int:
        """The position of the first message of the turns kept as they are: the most recent
        ``limits.keep_recent_turns``, fewer when those alone would not leave room for the
        summary within ``target`` (the last turn is always kept; with 0, none is)."""
        keep = self.rt.settings.limits.keep_recent_turns
        spans = turns(self.transcript, OPENING, len(self.transcript))
        if not keep or not spans:
            return len(self.transcript)
        window = self.window(model)
        room = target - self._tokens(self.transcript[:OPENING]) - int(window * SUMMARY_SHARE)
        start = spans[-1][0]
        for first, _ in reversed(spans[-keep:]):
            if self._tokens(self.transcript[first:]) > room:
                break
            start = first
        return start

    def _tokens(self, messages: Sequence[StoredMessage]) -> int:
        raw = sum(self.estimator.message_tokens(sm.message) for sm in messages)
        return self.rt.calibration.estimate(self.agent.model_name(self.rt.settings), raw)

    def _view_tokens(self, model: str) -> int:
        raw = sum(self.estimator.message_tokens(m) for m in self.view.messages())
        return self.rt.calibration.estimate(model, raw)

    async def _mask(self, end: int) -> bool:
        """Mask the results before position ``end`` not summarised or masked yet. True when
        something was masked."""
        done = max(self.view.summarised_upto(), self.view.masked_upto())
        kept = [
            (sm.seq, sm.message.tool_call_id or "", sm.message.name or "tool", c)
            for sm in self.transcript[OPENING:end]
            if sm.seq > done and sm.message.role == "tool"
            and len(c := sm.message.content or "") > MASK_MIN_CHARS
        ]  # fmt: skip
        if not kept:
            return False
        first, last = kept[0][0], self.transcript[end - 1].seq
        record = Compaction(MASK, first, last)
        self.view.add(await steps.record_mask(self.rt.store, self.lease, record, kept))
        self.artifacts = True  # the stubs point at them
        log.info("context_masked", results=len(kept), first_seq=first, last_seq=last)
        return True

    async def _summarise(self, model: str, end: int) -> None:
        """Summarise the turns before position ``end`` (with the summary before them)."""
        spans = turns(self.transcript, OPENING, end)
        if not spans or self.transcript[spans[-1][1]].seq <= self.view.summarised_upto():
            return  # nothing new to summarise
        summariser = self.rt.settings.limits.compaction_model or model
        window = self.window(summariser)
        budget = int(window * (1 - SUMMARY_SHARE)) - margin(window)
        text = self._span_text(end, chars_for(budget))
        last = self.transcript[spans[-1][1]].seq
        request = ChatRequest(
            model=summariser,
            messages=[
                ChatMessage(role="system", content=SUMMARISE),
                ChatMessage(role="user", content=text),
            ],
            max_tokens=max(int(window * SUMMARY_SHARE), 64),
        )
        estimate = self.rt.calibration.estimate(summariser, estimate_prompt_tokens(request))
        request = request.model_copy(update={"prompt_estimate": estimate})
        record = Compaction(SUMMARY, self.transcript[OPENING].seq, last)
        final = await self._summary_call(request, record)
        self.view.add(final)
        log.info("context_summarised", last_seq=last, chars=len(final.summary), model=summariser)

    def _span_text(self, end: int, max_chars: int) -> str:
        """The turns before ``end`` as plain text (the previous summary first), each message
        cut to its share of ``max_chars``."""
        done = self.view.summarised_upto()
        previous = [c.summary for c in self.view.compactions if c.kind == SUMMARY]
        parts = [f"Summary so far:\n{previous[-1]}"] if previous else []
        messages = [sm for sm in self.transcript[OPENING:end] if sm.seq > done]
        share = max((max_chars - sum(len(p) for p in parts)) // max(len(messages), 1), 80)
        for sm in messages:
            parts.append(_as_text(sm.message)[:share])
        return "\n\n".join(parts)

    async def _summary_call(self, request: ChatRequest, record: Compaction) -> Compaction:
        """Ask for the summary of ``record``'s span; the call is metered (kind
        ``compaction``) and the summary recorded with its ledger row."""
        held = Reservation(self.rt.store, self.rt.settings, self.lease, self.agent)
        try:
            completion = await self.rt.provider.complete(request, attempts=held)
        except (ProviderError, ControlSignal) as exc:  # paid attempts are recorded all the same
            await held.record_failure(_compaction(getattr(exc, "records", [])))
            raise
        except BaseException:
            await held.unsettle("cancelled while summarising")
            raise
        records = _compaction(held.unrecorded(completion.records))
        summary = (completion.message.content or "").strip() or "(nothing to keep)"
        return await steps.persist_compaction(held, records, replace(record, summary=summary))


def _as_text(message: ChatMessage) -> str:
    """One message as a line of plain text for the summariser."""
    if message.tool_calls:
        calls = "; ".join(f"{c.function.name}({c.function.arguments})" for c in message.tool_calls)
        return f"[{message.role} called] {calls}"
    label = f"result of {message.name}" if message.role == "tool" else message.role
    return f"[{label}] {message.content or ''}"


def _compaction(records: Sequence[CallRecord]) -> list[CallRecord]:
    return [replace(r, kind=COMPACTION) for r in records]
