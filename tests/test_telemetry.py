"""Metrics and traces of real runs (fake server + Worker): ``/metrics`` parsed with
prometheus_client's parser equals the ledger; a worker's own metrics, served on their port,
count the same calls; an in-memory exporter sees the span tree of a delegated run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from starlette.testclient import TestClient

from harness.store.schema import calls, tasks
from harness.telemetry import attached
from harness.telemetry.tracing import Tracing
from harness.testing.fakeserver import FakeConfig, FakeServer
from harness.web import create_app
from tests.helpers import submit, work
from tests.test_web import copy_workspace
from tests.web_seed import SIMMONS_SPENT, Seeded, configure, runtime, seed

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def ledger_sums(ws: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Straight from the calls table: per agent and model."""
    rt = runtime(ws)
    c = calls.c
    q = select(c.agent, c.model, c.outcome, func.count(), func.sum(c.prompt_tokens),
               func.sum(c.cached_tokens), func.sum(c.completion_tokens),
               func.sum(c.cost_usd)).group_by(c.agent, c.model, c.outcome)  # fmt: skip
    rows = rt.store.read_sync(lambda conn: conn.execute(q).all())
    rt.store.close()
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    for agent, model, outcome, n, prompt, cached, completion, cost in rows:
        acc = out[(agent, model)]
        acc[outcome] += n
        acc["input"] += prompt
        acc["cached"] += cached
        acc["output"] += completion
        acc["cost"] += cost
    return out


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(copy_workspace(tmp_path_factory.mktemp("metrics") / "ws"))


def test_served_metrics_equal_the_ledger(seeded: Seeded) -> None:
    rt = runtime(seeded.ws)
    with TestClient(create_app(rt), base_url="http://127.0.0.1") as c:
        r = c.get("/metrics")
    rt.store.close()
    assert r.headers["content-type"].startswith("text/plain")
    samples = parse(r.text)
    ledger = ledger_sums(seeded.ws)
    assert ledger
    for (agent, model), acc in ledger.items():
        for kind in ("input", "cached", "output"):
            got = total(samples, "harness_tokens_total", agent=agent, model=model, kind=kind)
            assert got == acc[kind], (agent, model, kind)
        for outcome in ("ok", "error", "unsettled"):
            got = total(samples, "harness_calls_total", agent=agent, model=model, outcome=outcome)
            assert got == acc[outcome], (agent, model, outcome)
        cost = total(samples, "harness_cost_usd_total", agent=agent, model=model)
        assert cost == pytest.approx(acc["cost"])
    assert total(samples, "harness_calls_total", agent="gulbenkian", outcome="error") >= 2
    assert total(samples, "harness_queue_depth", status="paused") == 1
    assert total(samples, "harness_tasks_total", agent="gulbenkian", status="failed") == 2
    assert total(samples, "harness_tasks_total", status="done") == 5
    left = 1000 - SIMMONS_SPENT
    assert total(samples, "harness_budget_remaining_tokens", agent="simmons") == left
    assert total(samples, "harness_tool_calls_total", tool="delegate") == 3
    answered = sum(acc["ok"] + acc["error"] for acc in ledger.values())
    assert total(samples, "harness_call_duration_seconds_count") == answered
    assert total(samples, "harness_task_duration_seconds_count") == 7  # every finished task
    for name, _labels in samples:  # low cardinality: never a run or task id
        assert "run" not in name and "task_id" not in name


async def test_a_worker_serves_its_own_metrics(tmp_path: Path) -> None:
    ws = copy_workspace(tmp_path / "ws")
    async with FakeServer(FakeConfig()) as up, FakeServer(FakeConfig(p_500=1.0)) as down:
        configure(ws, up.base_url, down.base_url)
        rt = runtime(ws)
        await submit(rt, "Brief me.")
        await submit(rt, "Model it.", "gulbenkian")
        async with attached(rt, metrics=("127.0.0.1", 0)) as counted:
            assert counted is not None and counted.address is not None
            await work(rt)
            host, port = counted.address
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://{host}:{port}/metrics")).text
        await rt.aclose()
    samples = parse(text)
    ledger = ledger_sums(ws)
    for (agent, model), acc in ledger.items():
        for kind in ("input", "output"):
            got = total(samples, "harness_tokens_total", agent=agent, model=model, kind=kind)
            assert got == acc[kind], (agent, kind)
        got = total(samples, "harness_calls_total", agent=agent, model=model, outcome="error")
        assert got == acc["error"]
    assert total(samples, "harness_tasks_total", status="done") == 3  # arnold and two
    assert total(samples, "harness_tasks_total", agent="gulbenkian", status="failed") == 2
    assert total(samples, "harness_queue_depth", status="queued") == 0  # read at the scrape
    assert total(samples, "harness_budget_remaining_tokens", agent="simmons") == 1000


async def test_a_delegated_run_is_one_span_tree(tmp_path: Path) -> None:
    ws = copy_workspace(tmp_path / "ws")
    exporter = InMemorySpanExporter()
    async with FakeServer(FakeConfig()) as up, FakeServer(FakeConfig(p_500=1.0)) as down:
        configure(ws, up.base_url, down.base_url)
        rt = runtime(ws)
        run_id, root_id = await submit(rt, "Brief me on HBM.")
        traces = Tracing(rt, SimpleSpanProcessor(exporter))
        rt.on_event = traces.on_event
        await work(rt)
        traces.shutdown()
        task_rows = await rt.store.read(lambda c: c.execute(select(tasks)).mappings().all())
        await rt.aclose()
    spans = list(exporter.get_finished_spans())
    by_id = {s.context.span_id: s for s in spans}
    assert len({s.context.trace_id for s in spans}) == 1  # the whole run, one trace
    agents = [s for s in spans if s.name.startswith("invoke_agent")]
    roots = [s for s in agents if s.parent is None]
    assert {s.name for s in roots} == {"invoke_agent arnold"}  # each activation of the root
    assert len(roots) == 4  # it waited for each of its three sub-tasks
    children = [s for s in agents if s.parent is not None]
    names = sorted(a(s, "gen_ai.agent.name") for s in children)
    assert names == ["bradlee", "gulbenkian", "gulbenkian", "veblen"]  # one retry
    for child in children:  # parented, across the queue, by the span that enqueued it
        parent = by_id[child.parent.span_id]  # type: ignore[union-attr]
        assert parent.name == "execute_tool delegate"
        assert a(parent, "harness.child_task_id") == a(child, "harness.task_id")
        assert by_id[parent.parent.span_id] in roots  # type: ignore[union-attr]
    tried = [s for s in children if a(s, "gen_ai.agent.name") == "gulbenkian"]
    assert [a(s, "harness.status") for s in tried] == ["queued", "failed"]
    assert tried[0].parent == tried[1].parent  # both activations under the one delegation
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert {s.name for s in chats} == {"chat fake-model"}
    ok = [s for s in chats if a(s, "gen_ai.usage.input_tokens") is not None]
    ledger = ledger_sums(ws)
    assert sum(a(s, "gen_ai.usage.input_tokens") for s in ok) == sum(
        acc["input"] for acc in ledger.values()
    )
    assert sum(a(s, "gen_ai.usage.output_tokens") for s in ok) == sum(
        acc["output"] for acc in ledger.values()
    )
    for chat in chats:
        parent = by_id[chat.parent.span_id]  # type: ignore[union-attr]
        assert parent.name.startswith("invoke_agent")
        assert a(chat, "gen_ai.conversation.id") == str(a(parent, "harness.task_id"))
        assert a(chat, "gen_ai.provider.name") in ("fake", "broken")
        assert a(chat, "gen_ai.agent.name") == a(parent, "gen_ai.agent.name")
        assert a(chat, "gen_ai.operation.name") == "chat"
    assert any(s.status.status_code.name == "ERROR" for s in chats)  # gulbenkian's model
    for s in spans:  # message content is off by default
        assert not any("messages" in key or "arguments" in key for key in s.attributes or {})
    ids = {r["id"] for r in task_rows}
    assert {a(s, "harness.task_id") for s in agents} == ids
    assert a(roots[0], "harness.run_id") == run_id and root_id in ids


def a(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def test_a_worker_without_a_metrics_port_never_loads_prometheus_client() -> None:
    """What ``harness worker`` imports to attach telemetry costs nothing it does not use:
    prometheus_client (and the metric families) load only for ``--metrics-port``."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from harness.telemetry import attached\n"
        "import harness.cli.runs\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'\n"
        "assert 'harness.telemetry.metrics' not in sys.modules, 'metrics imported'\n"
        "from harness.telemetry import EventMetrics\n"  # the names are still there
        "assert 'prometheus_client' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
