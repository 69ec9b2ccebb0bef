"""Telemetry: Prometheus metrics and OpenTelemetry traces of the runtime's work.

``metrics``: the metric families, defined once and read two ways (from the database for
``harness serve``, from a worker's own events for ``harness worker --metrics-port``).
``hooks``: consumers of ``Runtime.on_event``, shielded (``fan_out``), and ``attached``, which
the CLI wraps around a worker. ``tracing``: GenAI spans (the ``harness[otel]`` extra; imported
only when traces are enabled).
"""

from .hooks import attached, fan_out, tracing_enabled
from .metrics import SPECS, DatabaseCollector, EventMetrics

__all__ = ["SPECS", "DatabaseCollector", "EventMetrics", "attached", "fan_out", "tracing_enabled"]
