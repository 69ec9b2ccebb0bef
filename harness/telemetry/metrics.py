"""Prometheus metrics: one set of families, read two ways.

- :class:`DatabaseCollector` (``harness serve``'s ``/metrics``) reads them from the database at
  each scrape, through the ledger's and the views' query functions: its counters *are* the
  ledger (whatever process made the calls), its gauges the queue now.
- :class:`EventMetrics` (``harness worker --metrics-port``) counts what this process does, from
  the runtime's events (``Runtime.emit``); its gauges (budget left, queue depth) are read from
  the database at each scrape, like the collector's.

Labels are low-cardinality only: agent, model, token kind, outcome, status, tool; never a run
or task id. Input tokens include cached ones, as in the ledger (``cached`` is a part of
``input``, not an addition to it): input + output is the ledger's ``total_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Connection

from .. import clock
from ..ledger import reads
from ..settings import Settings
from ..store import TERMINAL, Store, views
from ..store.queue import ACTIVE, Task
from ..store.schema import TaskStatus
from ..usage import Budget, CallOutcome, CallRecord

__all__ = ["CALL_BUCKETS", "SPECS", "TASK_BUCKETS", "DatabaseCollector", "EventMetrics"]

CALL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TASK_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
KINDS = {"input": "prompt_tokens", "cached": "cached_tokens", "output": "completion_tokens"}


@dataclass(frozen=True)
class Spec:
    """One metric family: its name (without ``_total``), help text and labels."""

    name: str
    help: str
    labels: tuple[str, ...]


SPECS = {
    s.name: s
    for s in (
        Spec("harness_tokens", "Tokens of model calls (input includes cached).",
             ("agent", "model", "kind")),
        Spec("harness_cost_usd", "Cost of model calls in USD, from the price table.",
             ("agent", "model")),
        Spec("harness_calls", "Model call attempts that reached a server.",
             ("agent", "model", "outcome")),
        Spec("harness_budget_remaining_tokens", "Tokens left in today's budget.", ("agent",)),
        Spec("harness_tasks", "Tasks that ended, by how.", ("agent", "status")),
        Spec("harness_queue_depth", "Unfinished tasks now, by status.", ("status",)),
        Spec("harness_tool_calls", "Tool calls answered (delegations included).", ("tool",)),
        Spec("harness_call_duration_seconds", "Latency of answered call attempts.",
             ("agent", "model")),
        Spec("harness_task_duration_seconds", "How long tasks took.", ("agent",)),
    )
}  # fmt: skip

BudgetsFn = Callable[[], Mapping[str, Budget]]
M = TypeVar("M", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)


# -- gauges: the state now, read from the database by both ---------------------------------


def _gauges(conn: Connection, budgets: Mapping[str, Budget], settings: Settings) -> list[Metric]:
    left = _family(GaugeMetricFamily, "harness_budget_remaining_tokens")
    for f in reads.forecast(conn, budgets, settings.tz):
        left.add_metric([f["agent"]], max(f["budget_tokens"] - f["used_tokens"], 0))
    depth = _family(GaugeMetricFamily, "harness_queue_depth")
    counts = dict.fromkeys((s.value for s in ACTIVE), 0)
    for row in views.task_counts(conn):
        if row["status"] in counts:
            counts[row["status"]] += row["tasks"]
    for status, n in counts.items():
        depth.add_metric([status], n)
    return [left, depth]


def _family(kind: type[M], name: str) -> M:
    spec = SPECS[name]
    return kind(spec.name, spec.help, labels=list(spec.labels))


# -- harness serve: everything from the database -------------------------------------------


class DatabaseCollector(Collector):
    """Every family, read from the database at each scrape (one read transaction)."""

    def __init__(self, store: Store, settings: Settings, budgets: BudgetsFn) -> None:
        self.store, self.settings, self.budgets = store, settings, budgets

    def collect(self) -> Iterator[Metric]:
        yield from self.store.read_sync(self._read, self.budgets())

    def _read(self, conn: Connection, budgets: Mapping[str, Budget]) -> list[Metric]:
        return [
            *_ledger_counters(reads.rows(conn, budgets, by_model=True)),
            *_gauges(conn, budgets, self.settings),
            _task_counter(views.task_counts(conn)),
            _tool_counter(views.tool_counts(conn)),
            _histogram("harness_call_duration_seconds", reads.call_latency(conn, CALL_BUCKETS),
                       CALL_BUCKETS, ("agent", "model")),
            _histogram("harness_task_duration_seconds", views.task_durations(conn, TASK_BUCKETS),
                       TASK_BUCKETS, ("agent",)),
        ]  # fmt: skip


def _ledger_counters(rows: Sequence[Mapping[str, Any]]) -> list[Metric]:
    """Tokens, cost and calls per agent and model, summed over the ledger's days."""
    sums: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        acc = sums.setdefault((r["agent"], r["model"]), {})
        for key in (*KINDS.values(), "cost_usd", "calls", "error_calls", "unsettled_calls"):
            acc[key] = acc.get(key, 0) + r[key]
    tokens = _family(CounterMetricFamily, "harness_tokens")
    cost = _family(CounterMetricFamily, "harness_cost_usd")
    calls = _family(CounterMetricFamily, "harness_calls")
    for (agent, model), acc in sorted(sums.items()):
        for kind, key in KINDS.items():
            tokens.add_metric([agent, model, kind], acc[key])
        cost.add_metric([agent, model], acc["cost_usd"])
        ok = acc["calls"] - acc["error_calls"] - acc["unsettled_calls"]
        outcomes = {"ok": ok, "error": acc["error_calls"], "unsettled": acc["unsettled_calls"]}
        for outcome, n in outcomes.items():
            calls.add_metric([agent, model, outcome], n)
    return [tokens, cost, calls]


def _task_counter(counts: Sequence[Mapping[str, Any]]) -> Metric:
    family = _family(CounterMetricFamily, "harness_tasks")
    for row in counts:
        if row["status"] in TERMINAL:
            family.add_metric([row["agent"], row["status"]], row["tasks"])
    return family


def _tool_counter(counts: Mapping[str, int]) -> Metric:
    family = _family(CounterMetricFamily, "harness_tool_calls")
    for tool, n in counts.items():
        family.add_metric([tool], n)
    return family


def _histogram(
    name: str, rows: Sequence[Mapping[str, Any]], bounds: Sequence[float], keys: Sequence[str]
) -> Metric:
    family = _family(HistogramMetricFamily, name)
    for r in rows:
        buckets = [(_bound(b), n) for b, n in zip(bounds, r["buckets"], strict=True)]
        buckets.append(("+Inf", r["count"]))
        family.add_metric([r[k] for k in keys], buckets, r["sum"])
    return family


def _bound(b: float) -> str:
    return repr(float(b))


# -- harness worker: counted from this process's events ------------------------------------


class _Gauges(Collector):
    def __init__(self, store: Store, settings: Settings, budgets: BudgetsFn) -> None:
        self.store, self.settings, self.budgets = store, settings, budgets

    def collect(self) -> Iterator[Metric]:
        yield from self.store.read_sync(_gauges, self.budgets(), self.settings)


class EventMetrics:
    """The families of this process, fed by ``on_event`` (a ``Runtime.on_event`` consumer).

    Counters count what this process saw since it started (a call's attempts when it is
    answered or given up; a task when an activation ends it); the task histogram times each
    activation (claim to release). ``registry`` is what to serve.
    """

    def __init__(self, store: Store, settings: Settings, budgets: BudgetsFn) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.tokens = Counter(*_args("harness_tokens"), registry=reg)
        self.cost = Counter(*_args("harness_cost_usd"), registry=reg)
        self.calls = Counter(*_args("harness_calls"), registry=reg)
        self.tasks = Counter(*_args("harness_tasks"), registry=reg)
        self.tools = Counter(*_args("harness_tool_calls"), registry=reg)
        call_args = _args("harness_call_duration_seconds")
        self.call_seconds = Histogram(*call_args, buckets=CALL_BUCKETS, registry=reg)
        task_args = _args("harness_task_duration_seconds")
        self.task_seconds = Histogram(*task_args, buckets=TASK_BUCKETS, registry=reg)
        reg.register(_Gauges(store, settings, budgets))
        self._started: dict[int, float] = {}
        self.address: tuple[str, int] | None = None  # where they are served, once they are

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(**data)

    def _on_model_done(self, *, agent: str, completion: Any, **_: Any) -> None:
        self._count_calls(agent, completion.records)

    def _on_model_failed(self, *, agent: str, error: BaseException, **_: Any) -> None:
        self._count_calls(agent, getattr(error, "records", []))

    def _count_calls(self, agent: str, records: Sequence[CallRecord]) -> None:
        for rec in records:
            u = rec.usage
            for kind, n in (("input", u.prompt_tokens), ("cached", u.cached_tokens),
                            ("output", u.completion_tokens)):  # fmt: skip
                self.tokens.labels(agent, rec.model, kind).inc(n)
            model = self.settings.models.get(rec.model)  # the ledger's price rule
            if model is not None:
                spent = model.cost(u.prompt_tokens, u.cached_tokens, u.completion_tokens)
                self.cost.labels(agent, rec.model).inc(spent)
            self.calls.labels(agent, rec.model, str(rec.outcome)).inc()
            if rec.outcome is not CallOutcome.UNSETTLED:
                self.call_seconds.labels(agent, rec.model).observe(rec.latency_ms / 1000)

    def _on_task_started(self, *, task: Task, **_: Any) -> None:
        self._started[task.id] = clock.now()

    def _on_task_finished(self, *, task: Task, status: TaskStatus | None, **_: Any) -> None:
        started = self._started.pop(task.id, None)
        if started is not None:
            self.task_seconds.labels(task.agent).observe(max(clock.now() - started, 0.0))
        if status in TERMINAL:
            self.tasks.labels(task.agent, str(status)).inc()

    def _on_tool_done(self, *, tool: str, **_: Any) -> None:
        self.tools.labels(tool).inc()

    def _on_delegated(self, *, children: Sequence[int], **_: Any) -> None:
        self.tools.labels("delegate").inc(len(children))


def _args(name: str) -> tuple[str, str, list[str]]:
    spec = SPECS[name]
    return spec.name, spec.help, list(spec.labels)
