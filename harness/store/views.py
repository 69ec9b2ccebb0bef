"""Read models for the CLI: runs with their status and token totals, task trees, transcripts.

Everything here is a plain function of a read-only connection returning JSON-ready dicts.
The shapes are the documented ``--json`` output (docs/cli.md); change them only additively.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, case, func, select

from .. import clock
from ..messages import ChatMessage
from .compactions import MASK, SUMMARY, Compaction, load_compactions
from .schema import TERMINAL, TaskStatus, calls, messages, runs, tasks, workers
from .transcripts import load_transcript

TOKEN_FIELDS = ("calls", "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _usage(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(row[k] or 0) for k in TOKEN_FIELDS}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost_usd"] = round(float(row["cost_usd"] or 0.0), 6)
    out["estimated_calls"] = int(row["estimated_calls"] or 0)
    return out


def _run_query() -> Any:
    root = tasks.alias("root")
    last = (
        select(func.max(tasks.c.updated_at))
        .where(tasks.c.run_id == runs.c.id)
        .correlate(runs)
        .scalar_subquery()
    )
    return select(
        runs,
        root.c.status.label("status"),
        root.c.status_reason.label("status_reason"),
        root.c.result.label("answer"),
        root.c.error.label("error"),
        last.label("updated_at"),
    ).join(root, root.c.id == runs.c.root_task_id)


def _run_dict(conn: Connection, row: Any) -> dict[str, Any]:
    status = row["status"]
    reason = row["status_reason"]
    if status in (TaskStatus.WAITING, TaskStatus.QUEUED):
        blocked = _paused_reason(conn, row["id"])
        if blocked:
            reason = blocked
    return {
        "id": row["id"],
        "goal": row["goal"],
        "agent": row["agent"],
        "status": status,
        "reason": reason,
        "schedule": row["schedule"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"] or row["created_at"]),
        "answer": row["answer"],
        "error": row["error"],
        "usage": _usage(row),
    }


def _paused_reason(conn: Connection, run_id: int) -> str | None:
    row = conn.execute(
        select(tasks.c.id, tasks.c.agent, tasks.c.status_reason)
        .where(tasks.c.run_id == run_id, tasks.c.status == TaskStatus.PAUSED)
        .limit(1)
    ).first()
    if row is None:
        return None
    return f"task {row.id} ({row.agent}) is paused: {row.status_reason}"


def list_runs(
    conn: Connection,
    *,
    limit: int = 50,
    status: str | Collection[str] | None = None,
    agent: str | None = None,
    schedule: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[dict[str, Any]]:
    """The ``limit`` most recent runs, newest first; optionally only those whose status (the
    root task's) is ``status`` (or one of several), handed to ``agent``, started by
    ``schedule``, or created in ``since <= t <= until`` (epoch seconds)."""
    q = _run_query()
    if status:
        wanted = [status] if isinstance(status, str) else sorted(status)
        q = q.where(q.selected_columns.status.in_(wanted))
    if agent:
        q = q.where(runs.c.agent == agent)
    if schedule:
        q = q.where(runs.c.schedule == schedule)
    if since is not None:
        q = q.where(runs.c.created_at >= since)
    if until is not None:
        q = q.where(runs.c.created_at <= until)
    rows = conn.execute(q.order_by(runs.c.id.desc()).limit(limit)).mappings().all()
    return [_run_dict(conn, r) for r in rows]


def get_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(_run_query().where(runs.c.id == run_id)).mappings().first()
    if row is None:
        return None
    run = _run_dict(conn, row)
    run["tasks"] = task_tree(conn, run_id)
    return run


def run_created_at(conn: Connection, run_id: int) -> float | None:
    """When run ``run_id`` was submitted (epoch seconds; None when there is no such run)."""
    return conn.execute(select(runs.c.created_at).where(runs.c.id == run_id)).scalar()


def task_usage(conn: Connection, run_id: int) -> dict[int, dict[str, Any]]:
    rows = conn.execute(
        select(
            calls.c.task_id,
            func.count().label("calls"),
            func.sum(calls.c.prompt_tokens).label("prompt_tokens"),
            func.sum(calls.c.cached_tokens).label("cached_tokens"),
            func.sum(calls.c.completion_tokens).label("completion_tokens"),
            func.sum(calls.c.reasoning_tokens).label("reasoning_tokens"),
            func.sum(calls.c.cost_usd).label("cost_usd"),
            func.sum(func.cast(calls.c.estimated, tasks.c.id.type)).label("estimated_calls"),
        )
        .where(calls.c.run_id == run_id)
        .group_by(calls.c.task_id)
    ).mappings()
    return {r["task_id"]: _usage(r) for r in rows}


def task_tree(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """The run's tasks as a nested tree (children under ``children``), roots first."""
    usage = task_usage(conn, run_id)
    rows = conn.execute(
        select(tasks).where(tasks.c.run_id == run_id).order_by(tasks.c.id)
    ).mappings()
    nodes: dict[int, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    empty = _usage({k: 0 for k in (*TOKEN_FIELDS, "cost_usd", "estimated_calls")})
    for r in rows:
        node = {
            "id": r["id"],
            "parent_id": r["parent_id"],
            "agent": r["agent"],
            "status": r["status"],
            "reason": r["status_reason"],
            "input": r["input"],
            "attempts": r["attempts"],
            "steps": r["steps"],
            "result": r["result"],
            "error": r["error"],
            "created_at": iso(r["created_at"]),
            "updated_at": iso(r["updated_at"]),
            "usage": usage.get(r["id"], empty),
            "children": [],
        }
        nodes[r["id"]] = node
        parent = nodes.get(r["parent_id"]) if r["parent_id"] is not None else None
        (parent["children"] if parent else roots).append(node)
    return roots


def message_item(seq: int | None, m: ChatMessage) -> dict[str, Any]:
    """One message as ``harness show --json`` prints it."""
    item: dict[str, Any] = {"seq": seq, "role": m.role, "content": m.content}
    if m.tool_calls:
        item["tool_calls"] = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        item["tool_call_id"] = m.tool_call_id
        item["name"] = m.name
    return item


def transcript(conn: Connection, task_id: int) -> list[dict[str, Any]]:
    """A task's whole transcript; each compaction is an item of role ``compaction`` after
    the last message it covers, and a masked result names its artifact (``masked_as``)."""
    records = load_compactions(conn, task_id)
    after: dict[int, list[Compaction]] = {}
    masked: dict[int, int | None] = {}
    for c in records:
        after.setdefault(c.last_seq, []).append(c)
        if c.kind == MASK:
            masked.update((int(k), v) for k, v in json.loads(c.summary or "{}").items())
    out = []
    for sm in load_transcript(conn, task_id):
        item = message_item(sm.seq, sm.message)
        if sm.seq in masked:
            item["masked_as"] = masked[sm.seq]
        out.append(item)
        for c in after.get(sm.seq, []):
            if c.kind == SUMMARY:
                content = c.summary
            else:
                content = f"{len(json.loads(c.summary or '{}'))} tool result(s) masked"
            out.append({
                "seq": None, "role": "compaction", "kind": c.kind, "first_seq": c.first_seq,
                "last_seq": c.last_seq, "content": content, "call_id": c.call_id,
            })  # fmt: skip
    return out


def live_work(conn: Connection) -> dict[str, Any]:
    """Running tasks with their age, and worker heartbeats (for ``harness status``)."""
    now = clock.now()
    running = conn.execute(
        select(
            tasks.c.id,
            tasks.c.run_id,
            tasks.c.agent,
            tasks.c.started_at,
            tasks.c.updated_at,
            tasks.c.lease_owner,
        )
        .where(tasks.c.status == TaskStatus.RUNNING)
        .order_by(tasks.c.id)
    ).all()
    alive = conn.execute(
        select(
            workers.c.id,
            workers.c.host,
            workers.c.pid,
            workers.c.heartbeat_at,
            workers.c.concurrency,
        )
        .where(workers.c.stopped_at.is_(None))
        .order_by(workers.c.id)
    ).all()
    return {
        "running": [
            {
                "task_id": r.id,
                "run_id": r.run_id,
                "agent": r.agent,
                "age_s": round(now - (r.started_at or now), 1),
                "worker_id": r.lease_owner,
            }
            for r in running
        ],
        "workers": [
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "heartbeat_age_s": round(now - w.heartbeat_at, 1),
                "concurrency": w.concurrency,
            }
            for w in alive
        ],
    }


def task_counts(conn: Connection) -> list[dict[str, Any]]:
    """How many tasks each agent has in each status: ``[{"agent", "status", "tasks"}]``,
    sorted (the dashboard's queue depth, ``/metrics``)."""
    rows = conn.execute(
        select(tasks.c.agent, tasks.c.status, func.count().label("n"))
        .group_by(tasks.c.agent, tasks.c.status)
        .order_by(tasks.c.agent, tasks.c.status)
    ).all()
    return [{"agent": r.agent, "status": r.status, "tasks": int(r.n)} for r in rows]


def tool_counts(conn: Connection) -> dict[str, int]:
    """How many tool results every transcript holds, per tool name (delegations included)."""
    rows = conn.execute(
        select(messages.c.name, func.count())
        .where(messages.c.role == "tool")
        .group_by(messages.c.name)
        .order_by(messages.c.name)
    ).all()
    return {str(name or "?"): int(n) for name, n in rows}


def task_durations(conn: Connection, bounds: Sequence[float]) -> list[dict[str, Any]]:
    """Per agent, a histogram of how long finished tasks took (first start to finish, time
    spent waiting for sub-tasks included): ``{"agent", "count", "sum", "buckets"}`` where
    ``buckets[i]`` counts tasks that took at most ``bounds[i]`` seconds (cumulative)."""
    took = tasks.c.finished_at - tasks.c.started_at
    finished = tasks.c.status.in_([s.value for s in TERMINAL]) & tasks.c.started_at.is_not(None)
    return histogram(conn, took, [tasks.c.agent], bounds, finished)


def histogram(
    conn: Connection, value: Any, keys: Sequence[Any], bounds: Sequence[float], where: Any
) -> list[dict[str, Any]]:
    """A cumulative histogram of ``value`` per ``keys`` in one query (see task_durations)."""
    cols = [func.sum(case((value <= b, 1), else_=0)) for b in bounds]
    q = (
        select(*keys, func.count(), func.coalesce(func.sum(value), 0.0), *cols)
        .where(where)
        .group_by(*keys)
        .order_by(*keys)
    )
    out = []
    for row in conn.execute(q).all():
        n = len(keys)
        out.append(
            {
                **{k.name: row[i] for i, k in enumerate(keys)},
                "count": int(row[n]),
                "sum": float(row[n + 1]),
                "buckets": [int(c or 0) for c in row[n + 2 :]],
            }
        )
    return out
