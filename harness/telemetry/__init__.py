"""Telemetry: Prometheus metrics and OpenTelemetry traces of the runtime's work.

``metrics``: the metric families, defined once and read two ways (from the database for
``harness serve``, from a worker's own events for ``harness worker --metrics-port``).
``hooks``: consumers of ``Runtime.on_event``, shielded (``fan_out``), and ``attached``, which
the CLI wraps around a worker. ``tracing``: GenAI spans (the ``harness[otel]`` extra; imported
only when traces are enabled).

``metrics`` (and prometheus_client) is imported on first use: a worker with no metrics port
never loads it.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING, Any

from .hooks import attached, fan_out, tracing_enabled

if TYPE_CHECKING:
    from .metrics import SPECS as SPECS
    from .metrics import DatabaseCollector as DatabaseCollector
    from .metrics import EventMetrics as EventMetrics

__all__ = ["SPECS", "DatabaseCollector", "EventMetrics", "attached", "fan_out", "tracing_enabled"]


def __getattr__(name: str) -> Any:
    if name in ("SPECS", "DatabaseCollector", "EventMetrics"):
        return getattr(_import_module(".metrics", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
