"""Wiring telemetry to a runtime: several consumers of ``Runtime.on_event``, each shielded.

``attached(rt, metrics=(host, port))`` is what the CLI uses around a worker: metrics served
on their own port when asked, traces when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (else the
OpenTelemetry packages are never imported: no cost at all).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import ConfigError, Problem
from ..runtime import Runtime

if TYPE_CHECKING:
    from .metrics import EventMetrics

log = structlog.get_logger("harness.telemetry")

EventHook = Callable[[str, dict[str, Any]], None]

__all__ = ["EventHook", "attached", "fan_out", "tracing_enabled"]


def fan_out(*hooks: EventHook | None) -> EventHook | None:
    """One hook calling each of ``hooks`` in turn (None when there are none). A consumer that
    raises is logged and skipped: telemetry never fails a task."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def emit(event: str, data: dict[str, Any]) -> None:
        for hook in live:
            try:
                hook(event, data)
            except Exception:
                log.exception("telemetry_event_failed", event_name=event)

    return emit


def tracing_enabled() -> bool:
    """Whether traces are to be exported (the standard OTLP endpoint variables)."""
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def budgets_of(rt: Runtime) -> Callable[[], dict[str, Any]]:
    """Each agent's daily budget, from the runtime's team as it is now (it reloads)."""
    return lambda: {name: rt.team[name].budget(rt.settings) for name in rt.team.names()}


@asynccontextmanager
async def attached(
    rt: Runtime, *, metrics: tuple[str, int] | None = None
) -> AsyncIterator[EventMetrics | None]:
    """Feed ``rt``'s events to metrics (served on ``metrics = (host, port)``) and to traces
    (when enabled) for the duration; yields the metrics (None when not asked)."""
    counted, server = None, None
    if metrics is not None:  # prometheus_client is loaded only for a worker that serves it
        from prometheus_client import start_http_server

        from .metrics import EventMetrics

        counted = EventMetrics(rt.store, rt.settings, budgets_of(rt))
        server, _thread = start_http_server(metrics[1], addr=metrics[0], registry=counted.registry)
        counted.address = (metrics[0], server.server_port)
        log.info("metrics_serving", host=metrics[0], port=server.server_port)
    traces = None
    if tracing_enabled():
        try:
            from .tracing import Tracing  # the optional extra, imported only when used
        except ImportError as exc:
            why = f"traces need the OpenTelemetry packages: pip install 'harness[otel]' ({exc})"
            raise ConfigError(Problem("OTEL_EXPORTER_OTLP_ENDPOINT", why)) from exc
        traces = Tracing.from_env(rt)
    before = rt.on_event
    rt.on_event = fan_out(before, counted.on_event if counted else None,
                          traces.on_event if traces else None)  # fmt: skip
    try:
        yield counted
    finally:
        rt.on_event = before
        if server is not None:
            server.shutdown()
            server.server_close()
        if traces is not None:
            traces.shutdown()
