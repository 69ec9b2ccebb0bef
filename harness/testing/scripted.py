""":class:`ScriptedProvider`: a deterministic Provider answering from a script.

A script is a list of steps, consumed one per call::

    provider = ScriptedProvider([
        ScriptedProvider.tool_call("web_search", {"query": "HBM prices"}),
        ScriptedProvider.text("HBM prices rose."),
    ])

A step may be:

- a :class:`Step` (build one with :meth:`ScriptedProvider.text`, :meth:`~ScriptedProvider.
  tool_call` or :meth:`~ScriptedProvider.tool_calls`), or just a ``str`` (a text answer) or a
  :class:`~harness.messages.ChatMessage`;
- a :class:`~harness.provider.Completion`, returned as it is;
- an exception (instance or class) to raise, e.g. :meth:`ScriptedProvider.error`;
- a callable ``(request) -> step`` deciding at call time.

The whole script may also be one callable, used for every call (never runs out). Usage is
estimated from the request and the answer (like a real server would count, not marked
``estimated`` unless asked), and every answer carries one OK call record, so ledger code sees
realistic numbers. Running out of script raises :class:`ScriptExhausted` (an AssertionError).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeAlias, Union, cast

import anyio

from ..errors import ControlSignal, ProviderError
from ..messages import ChatMessage, ChatRequest, FunctionCall, ToolCall
from ..provider.base import Attempts, Completion
from ..provider.tokens import estimate_completion_tokens, estimate_prompt_tokens
from ..usage import CallOutcome, CallRecord, Usage

__all__ = ["DEFAULT_MAX_TOKENS", "ScriptExhausted", "ScriptedProvider", "Step", "StepLike"]

DEFAULT_MAX_TOKENS = 1024  # what a request without max_tokens reserves (a config's default)


@dataclass(frozen=True)
class Step:
    """One scripted answer. ``usage=None`` means: estimate it from request and answer."""

    message: ChatMessage
    finish_reason: str | None = "stop"
    usage: Usage | None = None
    model: str | None = None  # the model name reported as answering; default: the requested
    delay_s: float = 0.0  # sleep this long (really) before answering


StepLike: TypeAlias = Union[  # noqa: UP007 - a recursive alias must be evaluated at runtime
    Step,
    Completion,
    ChatMessage,
    str,
    BaseException,
    type[BaseException],
    Callable[[ChatRequest], "StepLike"],
]


class ScriptExhausted(AssertionError):
    """The code under test made more model calls than the script has steps."""


class ScriptedProvider:
    """A :class:`~harness.provider.Provider` answering from a script; records every request."""

    def __init__(
        self,
        script: Iterable[StepLike] | Callable[[ChatRequest], StepLike] = (),
        *,
        provider: str = "scripted",
        estimated: bool = False,
    ) -> None:
        self._dynamic: Callable[[ChatRequest], StepLike] | None = None
        self._steps: list[StepLike] = []
        if callable(script):
            self._dynamic = script
        else:
            self._steps = list(script)
        self.provider = provider
        self.estimated = estimated
        self.requests: list[ChatRequest] = []
        self.completions: list[Completion] = []
        self.closed = False
        self._call_ids = 0

    # -- building steps ----------------------------------------------------------------

    @staticmethod
    def text(
        content: str,
        *,
        finish_reason: str | None = "stop",
        usage: Usage | None = None,
        model: str | None = None,
        delay_s: float = 0.0,
    ) -> Step:
        """A plain text answer."""
        message = ChatMessage(role="assistant", content=content)
        return Step(message, finish_reason, usage, model, delay_s)

    @staticmethod
    def tool_call(
        name: str,
        arguments: dict[str, Any] | str | None = None,
        *,
        id: str | None = None,
        content: str | None = None,
        usage: Usage | None = None,
        delay_s: float = 0.0,
    ) -> Step:
        """One tool call. ``arguments`` as a dict, or a raw (possibly invalid) JSON string.

        Without ``id`` the call gets ``call_1``, ``call_2``... in the order answers go out.
        """
        return ScriptedProvider.tool_calls(
            (name, arguments, id), content=content, usage=usage, delay_s=delay_s
        )

    @staticmethod
    def tool_calls(
        *calls: tuple[str, dict[str, Any] | str | None]
        | tuple[str, dict[str, Any] | str | None, str | None],
        content: str | None = None,
        usage: Usage | None = None,
        delay_s: float = 0.0,
    ) -> Step:
        """Several parallel tool calls in one answer: ``(name, arguments[, id])`` each."""
        built = []
        for call in calls:
            name, arguments = call[0], call[1]
            call_id = call[2] if len(call) > 2 else None
            raw = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
            built.append(
                ToolCall(id=call_id or "", function=FunctionCall(name=name, arguments=raw))
            )
        message = ChatMessage(role="assistant", content=content, tool_calls=built)
        return Step(message, "tool_calls", usage, None, delay_s)

    @staticmethod
    def error(
        status: int | None = 500, body: str = "scripted failure", *, retryable: bool = True
    ) -> ProviderError:
        """A final provider failure, as OpenAIProvider raises it after retries and fallbacks.

        When raised, it gets one failed call record for the requested model (unless it
        already has records, or ``status`` is None: a failure that never reached a server).
        """
        return ProviderError(
            f"scripted provider failure (HTTP {status})",
            provider="scripted",
            model="",
            status=status,
            body=body,
            retryable=retryable,
        )

    def add(self, *steps: StepLike) -> ScriptedProvider:
        """Append steps to the script; returns self."""
        self._steps.extend(steps)
        return self

    # -- inspecting --------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Steps not consumed yet (0 for a dynamic script)."""
        return len(self._steps)

    @property
    def last_request(self) -> ChatRequest:
        if not self.requests:
            raise AssertionError("ScriptedProvider has received no request")
        return self.requests[-1]

    def assert_exhausted(self) -> None:
        """Fail unless every scripted step was used."""
        if self._steps:
            raise AssertionError(f"{len(self._steps)} scripted step(s) were never used")

    # -- the Provider interface --------------------------------------------------------

    async def complete(
        self, request: ChatRequest, *, attempts: Attempts | None = None
    ) -> Completion:
        """Answer ``request`` with the next step (recording the request as it goes out).

        Like the real provider, ``attempts.before`` is awaited before every attempt (a scripted
        :class:`Completion` with several records stands for retries or fallbacks: once per
        record) and a ControlSignal it raises carries the attempts made so far as
        ``.records``; ``attempts.sending()`` is called as each attempt goes out. A step is
        consumed only once its first attempt may go. A granted ``max_tokens`` below the
        request's (near the end of a budget) caps the answer's completion tokens, as a server
        would.
        """
        cap = await self._before(attempts, request, request.model, [])
        self.requests.append(request)  # it goes out: a refused call is never sent
        step = self._resolve(self._next(request), request)
        if isinstance(step, Completion):
            for n in range(2, len(step.records) + 1):
                await self._before(
                    attempts, request, step.records[n - 1].model, step.records[: n - 1]
                )
            self.completions.append(step)
            return step
        if step.delay_s:
            await anyio.sleep(step.delay_s)
        completion = self._answer(step, request, cap)
        self.completions.append(completion)
        return completion

    async def _before(
        self,
        attempts: Attempts | None,
        request: ChatRequest,
        model: str,
        failed: Sequence[CallRecord],
    ) -> int | None:
        if attempts is None:
            return None
        try:
            cap = await attempts.before(
                model,
                failed,
                prompt_tokens=request.prompt_estimate or estimate_prompt_tokens(request),
                max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
            )
        except ControlSignal as signal:
            signal.records = list(failed)  # type: ignore[attr-defined]
            raise
        attempts.sending()
        return cap

    async def aclose(self) -> None:
        self.closed = True

    # -- internals ---------------------------------------------------------------------

    def _next(self, request: ChatRequest) -> StepLike:
        if self._dynamic is not None:
            return self._dynamic(request)
        if not self._steps:
            raise ScriptExhausted(self._exhausted_message(request))
        return self._steps.pop(0)

    def _exhausted_message(self, request: ChatRequest) -> str:
        used = len(self.requests) - 1
        last = request.messages[-1] if request.messages else None
        said = f"{last.role}: {(last.content or '')[:200]!r}" if last else "no messages"
        return (
            f"ScriptedProvider ran out of script after {used} step(s); call #{used + 1}"
            f" (model {request.model!r}) ended with {said}"
        )

    def _resolve(self, item: StepLike, request: ChatRequest) -> Step | Completion:
        for _ in range(8):  # a callable may return another callable, within reason
            if isinstance(item, BaseException):
                raise self._with_record(item, request)
            if isinstance(item, type) and issubclass(item, BaseException):
                raise item()
            if isinstance(item, Step | Completion):
                return item
            if isinstance(item, str):
                return self.text(item)
            if isinstance(item, ChatMessage):
                return Step(item, "tool_calls" if item.tool_calls else "stop")
            if callable(item):
                item = cast(Callable[[ChatRequest], StepLike], item)(request)
                continue
            raise TypeError(f"not a script step: {item!r}")
        raise TypeError("script callables nested too deeply")

    def _with_record(self, exc: BaseException, request: ChatRequest) -> BaseException:
        if isinstance(exc, ProviderError) and not exc.records and exc.status is not None:
            exc.model = exc.model or request.model
            exc.records = [
                CallRecord(
                    provider=self.provider,
                    model=request.model,
                    outcome=CallOutcome.ERROR,
                    status=exc.status,
                    error=str(exc),
                )
            ]
        return exc

    def _answer(self, step: Step, request: ChatRequest, cap: int | None = None) -> Completion:
        message = self._with_ids(step.message)
        usage = step.usage or Usage(
            prompt_tokens=estimate_prompt_tokens(request),
            completion_tokens=estimate_completion_tokens(message),
            estimated=self.estimated,
        )
        shrunk = cap is not None and cap < (request.max_tokens or DEFAULT_MAX_TOKENS)
        if shrunk and cap is not None and usage.completion_tokens > cap:  # a server stops there
            usage = replace(usage, completion_tokens=cap)
        model = step.model or request.model
        record = CallRecord(
            provider=self.provider,
            model=model,
            outcome=CallOutcome.OK,
            usage=usage,
            latency_ms=step.delay_s * 1000.0,
            attempt=1,
            status=200,
        )
        return Completion(message, step.finish_reason, usage, model, [record])

    def _with_ids(self, message: ChatMessage) -> ChatMessage:
        if not message.tool_calls or all(call.id for call in message.tool_calls):
            return message
        calls = []
        for call in message.tool_calls:
            if not call.id:
                self._call_ids += 1
                call = call.model_copy(update={"id": f"call_{self._call_ids}"})
            calls.append(call)
        return message.model_copy(update={"tool_calls": calls})
