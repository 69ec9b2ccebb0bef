"""OpenTelemetry traces of the runtime's events, per the GenAI semantic conventions.

Spans: ``invoke_agent {agent}`` for each activation of a task (claim to release), ``chat
{model}`` for each model call (its retries and fallbacks included), ``execute_tool {tool}``
for each tool call, and ``execute_tool delegate`` for each sub-task a task creates. Attributes:
``gen_ai.operation.name``, ``gen_ai.agent.name``, ``gen_ai.conversation.id`` (the task id),
``gen_ai.provider.name``, ``gen_ai.request.model`` / ``gen_ai.response.model`` (wire ids),
``gen_ai.usage.input_tokens`` / ``output_tokens`` / ``cache_read.input_tokens``, and
``harness.*`` ids. Message content is recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.

Across the queue: a run is one trace, whichever processes work on it. Its trace id is derived
from the run's id and creation time, and the span that enqueued a sub-task has an id derived
from the sub-task's id, so the sub-task's spans, in any process, are children of it. Those
ids are set through this provider's id generator (all others are random); a resumed task that
re-creates a sub-task after a crash may emit that enqueueing span twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from ..runtime import Runtime
from ..store import views
from ..store.queue import Task
from ..store.schema import TaskStatus

__all__ = ["CAPTURE_ENV", "Tracing"]

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_MAX_RUNS = 4096  # trace ids remembered (one indexed read per run and process otherwise)


class _Ids(RandomIdGenerator):
    """Random ids, except the next one asked for on this thread when ``force`` set it."""

    def __init__(self) -> None:
        self._next = threading.local()

    def force(self, *, trace_id: int | None = None, span_id: int | None = None) -> None:
        self._next.trace_id, self._next.span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        forced: int | None = getattr(self._next, "trace_id", None)
        self._next.trace_id = None
        return forced or super().generate_trace_id()

    def generate_span_id(self) -> int:
        forced: int | None = getattr(self._next, "span_id", None)
        self._next.span_id = None
        return forced or super().generate_span_id()


def _derive(bits: int, *parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, ("harness", *parts))).encode()).digest()
    return int.from_bytes(digest[: bits // 8], "big") or 1


@dataclass
class _Open:
    """The spans of one task activation still open."""

    span: Span
    agent: str
    trace_id: int
    chat: Span | None = None
    tool: Span | None = None
    delegated: set[int] = field(default_factory=set)


class Tracing:
    """A ``Runtime.on_event`` consumer making spans; ``processor`` exports them."""

    def __init__(self, rt: Runtime, processor: SpanProcessor, *, capture: bool = False) -> None:
        self.rt, self.capture = rt, capture
        self._ids = _Ids()
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "harness")})
        self.provider = TracerProvider(resource=resource, id_generator=self._ids)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("harness")
        self._open: dict[int, _Open] = {}
        self._traces: dict[int, int] = {}

    @classmethod
    def from_env(cls, rt: Runtime) -> Tracing:
        """Exporting by OTLP over HTTP (endpoint, headers, ... from the standard OTEL_*
        variables); content captured when CAPTURE_ENV is true."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        capture = os.environ.get(CAPTURE_ENV, "").strip().lower() in ("1", "true", "yes")
        return cls(rt, BatchSpanProcessor(OTLPSpanExporter()), capture=capture)

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        self.provider.shutdown()

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(**data)

    # -- ids across the queue --------------------------------------------------------------

    def trace_id(self, run_id: int) -> int:
        """The run's trace id: the same in every process (from its id and creation time)."""
        known = self._traces.get(run_id)
        if known is None:
            if len(self._traces) >= _MAX_RUNS:
                self._traces.clear()
            created = self.rt.store.read_sync(views.run_created_at, run_id)
            known = self._traces[run_id] = _derive(128, "run", run_id, repr(created))
        return known

    @staticmethod
    def enqueue_span_id(trace_id: int, task_id: int) -> int:
        """The id of the span that enqueued sub-task ``task_id`` (its spans' parent)."""
        return _derive(64, trace_id, "enqueued", task_id)

    def _parent(self, task: Task, trace_id: int) -> Context:
        if task.parent_id is None:
            self._ids.force(trace_id=trace_id)  # a root span: its trace id is the run's
            return Context()  # (not whatever span happens to be current)
        ctx = SpanContext(trace_id, self.enqueue_span_id(trace_id, task.id), is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip
        return trace.set_span_in_context(NonRecordingSpan(ctx))

    # -- events ----------------------------------------------------------------------------

    def _on_task_started(self, *, task: Task, worker_id: int, **_: Any) -> None:
        trace_id = self.trace_id(task.run_id)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": task.agent,
            "gen_ai.conversation.id": str(task.id),
            "harness.run_id": task.run_id,
            "harness.task_id": task.id,
            "harness.attempt": task.attempts,
            "harness.worker_id": worker_id,
        }
        if task.parent_id is not None:
            attrs["harness.parent_task_id"] = task.parent_id
        if self.capture:
            attrs["gen_ai.input.messages"] = _messages([("user", task.input)])
        span = self.tracer.start_span(f"invoke_agent {task.agent}", self._parent(task, trace_id),
                                      SpanKind.INTERNAL, attrs)  # fmt: skip
        self._open[task.id] = _Open(span, task.agent, trace_id)

    def _on_task_finished(self, *, task: Task, status: TaskStatus | None, **_: Any) -> None:
        spans = self._open.pop(task.id, None)
        if spans is None:
            return
        for child in (spans.chat, spans.tool):
            if child is not None:
                _end(child, "interrupted")
        spans.span.set_attribute("harness.status", str(status or "interrupted"))
        if status in (None, TaskStatus.FAILED):
            spans.span.set_status(Status(StatusCode.ERROR, str(status or "interrupted")))
        spans.span.end()

    def _child(self, task_id: int, name: str, kind: SpanKind, attrs: dict[str, Any]) -> Span:
        spans = self._open[task_id]
        base = {"gen_ai.agent.name": spans.agent, "gen_ai.conversation.id": str(task_id)}
        context = trace.set_span_in_context(spans.span)
        attributes = {k: v for k, v in {**base, **attrs}.items() if v is not None}
        return self.tracer.start_span(name, context, kind, attributes)

    def _on_model_call(self, *, task_id: int, request: Any, **_: Any) -> None:
        if task_id not in self._open:
            return
        model = self.rt.settings.models.get(request.model)
        wire = model.id if model else request.model
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": model.provider if model else None,
            "gen_ai.request.model": wire,
            "gen_ai.request.max_tokens": request.max_tokens,
            "gen_ai.request.temperature": request.temperature,
            "harness.model": request.model,
        }
        if self.capture:
            attrs["gen_ai.input.messages"] = _messages(
                [(m.role, m.content or "") for m in request.messages]
            )
        self._open[task_id].chat = self._child(task_id, f"chat {wire}", SpanKind.CLIENT, attrs)

    def _on_model_done(self, *, task_id: int, completion: Any, **_: Any) -> None:
        spans = self._open.get(task_id)
        if spans is None or spans.chat is None:
            return
        span, spans.chat = spans.chat, None
        model = self.rt.settings.models.get(completion.model)
        u = completion.usage
        span.set_attributes({
            "gen_ai.response.model": model.id if model else completion.model,
            "gen_ai.response.finish_reasons": [completion.finish_reason or "unknown"],
            "gen_ai.usage.input_tokens": u.prompt_tokens,
            "gen_ai.usage.output_tokens": u.completion_tokens,
            "gen_ai.usage.cache_read.input_tokens": u.cached_tokens,
            "harness.attempts": len(completion.records),
            "harness.usage_estimated": u.estimated,
        })  # fmt: skip
        if self.capture:
            span.set_attribute("gen_ai.output.messages", _output(completion.message))
        span.end()

    def _on_model_failed(self, *, task_id: int, error: BaseException, **_: Any) -> None:
        spans = self._open.get(task_id)
        if spans is None or spans.chat is None:
            return
        span, spans.chat = spans.chat, None
        span.set_attribute("error.type", type(error).__name__)
        span.set_attribute("harness.attempts", len(getattr(error, "records", [])))
        _end(span, str(error)[:500])

    def _on_tool_start(self, *, task_id: int, tool: str, call: Any, **_: Any) -> None:
        if task_id not in self._open:
            return
        attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                 "gen_ai.tool.call.id": call.id, "gen_ai.tool.type": "function"}  # fmt: skip
        if self.capture:
            attrs["gen_ai.tool.call.arguments"] = call.function.arguments
        span = self._child(task_id, f"execute_tool {tool}", SpanKind.INTERNAL, attrs)
        self._open[task_id].tool = span

    def _on_tool_done(self, *, task_id: int, ok: bool, **_: Any) -> None:
        spans = self._open.get(task_id)
        if spans is None or spans.tool is None:
            return
        span, spans.tool = spans.tool, None
        if ok:
            span.end()
        else:
            _end(span, "the tool failed")

    def _on_delegated(self, *, task_id: int, children: Sequence[int], **_: Any) -> None:
        spans = self._open.get(task_id)
        if spans is None:
            return
        for child in children:
            if child in spans.delegated:
                continue
            spans.delegated.add(child)
            self._ids.force(span_id=self.enqueue_span_id(spans.trace_id, child))
            attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "delegate",
                     "gen_ai.tool.type": "function", "harness.child_task_id": child}  # fmt: skip
            self._child(task_id, "execute_tool delegate", SpanKind.PRODUCER, attrs).end()


def _end(span: Span, why: str) -> None:
    span.set_status(Status(StatusCode.ERROR, why))
    span.end()


def _messages(pairs: Sequence[tuple[str, str]]) -> str:
    """Messages as the GenAI conventions' JSON: ``[{"role", "parts": [{"type", "content"}]}]``."""
    return json.dumps([{"role": r, "parts": [{"type": "text", "content": c}]} for r, c in pairs])


def _output(message: Any) -> str:
    parts: list[Mapping[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "content": message.content})
    for call in message.tool_calls or []:
        parts.append({"type": "tool_call", "id": call.id, "name": call.function.name,
                      "arguments": call.function.arguments})  # fmt: skip
    return json.dumps([{"role": "assistant", "parts": parts}])
