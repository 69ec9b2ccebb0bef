"""Read models for the CLI: runs with their status and token totals, task trees, transcripts.

Everything here is a plain function of a read-only connection returning JSON-ready dicts.
The shapes are the documented ``--json`` output (docs/cli.md); change them only additively.

The CLI's read models are portable SQL text (``store.sql``): they run on a SQLAlchemy
connection and on the bare ``sqlite3`` one of the read-only commands' light path
(``store.light``), so ``harness status`` never imports SQLAlchemy. The aggregates for
metrics and the dashboard (counts, histograms) below them are SQLAlchemy Core, imported when
they run.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import clock
from .sql import Conn, fetch, first, placeholders
from .status import MASK, SUMMARY, TERMINAL, TaskStatus

if TYPE_CHECKING:
    from sqlalchemy import Connection

TOKEN_FIELDS = ("calls", "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


def _usage(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: int(row[k] or 0) for k in TOKEN_FIELDS}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost_usd"] = round(float(row["cost_usd"] or 0.0), 6)
    out["estimated_calls"] = int(row["estimated_calls"] or 0)
    return out


_RUNS = """
SELECT r.id, r.goal, r.agent, r.schedule, r.created_at,
       r.calls, r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.reasoning_tokens,
       r.cost_usd, r.estimated_calls,
       root.status AS status, root.status_reason AS status_reason,
       root.result AS answer, root.error AS error,
       (SELECT MAX(t.updated_at) FROM tasks t WHERE t.run_id = r.id) AS updated_at
FROM runs r JOIN tasks root ON root.id = r.root_task_id
"""


def _run_dict(conn: Conn, row: dict[str, Any]) -> dict[str, Any]:
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


_PAUSED = """
SELECT id, agent, status_reason FROM tasks WHERE run_id = :run AND status = :paused
ORDER BY id LIMIT 1
"""


def _paused_reason(conn: Conn, run_id: int) -> str | None:
    row = first(conn, _PAUSED, {"run": run_id, "paused": TaskStatus.PAUSED.value})
    if row is None:
        return None
    return f"task {row['id']} ({row['agent']}) is paused: {row['status_reason']}"


def list_runs(
    conn: Conn,
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
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if status:
        wanted = [status] if isinstance(status, str) else sorted(status)
        marks, values = placeholders("status", wanted)
        where.append(f"root.status IN ({marks})")
        params.update(values)
    for column, key, value in (
        ("r.agent = :agent", "agent", agent),
        ("r.schedule = :schedule", "schedule", schedule),
        ("r.created_at >= :since", "since", since),
        ("r.created_at <= :until", "until", until),
    ):
        if value is not None and value != "":
            where.append(column)
            params[key] = value
    sql = _RUNS + (" WHERE " + " AND ".join(where) if where else "")
    rows = fetch(conn, sql + " ORDER BY r.id DESC LIMIT :limit", params)
    return [_run_dict(conn, r) for r in rows]


def get_run(conn: Conn, run_id: int) -> dict[str, Any] | None:
    row = first(conn, _RUNS + " WHERE r.id = :run", {"run": run_id})
    if row is None:
        return None
    run = _run_dict(conn, row)
    run["tasks"] = task_tree(conn, run_id)
    return run


def run_created_at(conn: Conn, run_id: int) -> float | None:
    """When run ``run_id`` was submitted (epoch seconds; None when there is no such run)."""
    row = first(conn, "SELECT created_at FROM runs WHERE id = :run", {"run": run_id})
    return None if row is None else float(row["created_at"])


_TASK_USAGE = """
SELECT task_id, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt_tokens,
       SUM(cached_tokens) AS cached_tokens, SUM(completion_tokens) AS completion_tokens,
       SUM(reasoning_tokens) AS reasoning_tokens, SUM(cost_usd) AS cost_usd,
       SUM(CASE WHEN estimated THEN 1 ELSE 0 END) AS estimated_calls
FROM calls WHERE run_id = :run GROUP BY task_id
"""


def task_usage(conn: Conn, run_id: int) -> dict[int, dict[str, Any]]:
    return {r["task_id"]: _usage(r) for r in fetch(conn, _TASK_USAGE, {"run": run_id})}


_TASKS = """
SELECT id, parent_id, agent, status, status_reason, input, attempts, steps, result, error,
       created_at, updated_at
FROM tasks WHERE run_id = :run ORDER BY id
"""


def task_tree(conn: Conn, run_id: int) -> list[dict[str, Any]]:
    """The run's tasks as a nested tree (children under ``children``), roots first."""
    usage = task_usage(conn, run_id)
    nodes: dict[int, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    empty = _usage({k: 0 for k in (*TOKEN_FIELDS, "cost_usd", "estimated_calls")})
    for r in fetch(conn, _TASKS, {"run": run_id}):
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


_MESSAGES = """
SELECT seq, role, content, tool_calls, tool_call_id, name
FROM messages WHERE task_id = :task ORDER BY seq
"""
_COMPACTIONS = """
SELECT kind, first_seq, last_seq, summary, call_id FROM compactions WHERE task_id = :task
ORDER BY id
"""


def message_item(
    seq: int | None,
    role: str,
    content: str | None,
    calls: Sequence[dict[str, Any]] = (),
    tool_call_id: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """One message as ``harness show --json`` prints it (``calls`` as the wire writes tool
    calls: ``{"id", "function": {"name", "arguments"}}``)."""
    item: dict[str, Any] = {"seq": seq, "role": role, "content": content}
    if calls:
        item["tool_calls"] = [
            {
                "id": c["id"],
                "name": c["function"]["name"],
                "arguments": c["function"].get("arguments", "{}"),
            }
            for c in calls
        ]
    if tool_call_id:
        item["tool_call_id"] = tool_call_id
        item["name"] = name
    return item


def transcript(conn: Conn, task_id: int) -> list[dict[str, Any]]:
    """A task's whole transcript in order: ``seq``, ``role``, ``content``; an assistant's
    ``tool_calls`` (``id``, ``name``, ``arguments``); a tool result's ``tool_call_id`` and
    ``name`` (and ``masked_as``, the artifact its stub names, when it is masked in what is
    sent). Each compaction is an item of role ``compaction`` after the last message it
    covers: ``kind`` (mask, summary), ``first_seq``, ``last_seq``, ``content`` (the summary),
    ``call_id`` (the summary call's ledger row)."""
    after: dict[int, list[dict[str, Any]]] = {}
    masked: dict[int, int | None] = {}
    for c in fetch(conn, _COMPACTIONS, {"task": task_id}):
        after.setdefault(c["last_seq"], []).append(c)
        if c["kind"] == MASK:
            masked.update((int(k), v) for k, v in json.loads(c["summary"] or "{}").items())
    out = []
    for m in fetch(conn, _MESSAGES, {"task": task_id}):
        calls = json.loads(m["tool_calls"]) if m["tool_calls"] else ()
        item = message_item(m["seq"], m["role"], m["content"], calls, m["tool_call_id"], m["name"])
        if m["seq"] in masked:
            item["masked_as"] = masked[m["seq"]]
        out.append(item)
        for c in after.get(m["seq"], []):
            if c["kind"] == SUMMARY:
                content = c["summary"]
            else:
                content = f"{len(json.loads(c['summary'] or '{}'))} tool result(s) masked"
            out.append({
                "seq": None, "role": "compaction", "kind": c["kind"],
                "first_seq": c["first_seq"], "last_seq": c["last_seq"], "content": content,
                "call_id": c["call_id"],
            })  # fmt: skip
    return out


_RUNNING = """
SELECT id, run_id, agent, started_at, lease_owner FROM tasks WHERE status = :running ORDER BY id
"""
_ALIVE = """
SELECT id, host, pid, heartbeat_at, concurrency FROM workers WHERE stopped_at IS NULL ORDER BY id
"""


def live_work(conn: Conn) -> dict[str, Any]:
    """Running tasks with their age, and worker heartbeats (for ``harness status``)."""
    now = clock.now()
    running = fetch(conn, _RUNNING, {"running": TaskStatus.RUNNING.value})
    alive = fetch(conn, _ALIVE)
    return {
        "running": [
            {
                "task_id": r["id"],
                "run_id": r["run_id"],
                "agent": r["agent"],
                "age_s": round(now - (r["started_at"] or now), 1),
                "worker_id": r["lease_owner"],
            }
            for r in running
        ],
        "workers": [
            {
                "id": w["id"],
                "host": w["host"],
                "pid": w["pid"],
                "heartbeat_age_s": round(now - w["heartbeat_at"], 1),
                "concurrency": w["concurrency"],
            }
            for w in alive
        ],
    }


# -- aggregates for metrics and the dashboard (SQLAlchemy Core) ------------------------------


def task_counts(conn: Connection) -> list[dict[str, Any]]:
    """How many tasks each agent has in each status: ``[{"agent", "status", "tasks"}]``,
    sorted (the dashboard's queue depth, ``/metrics``)."""
    from sqlalchemy import func, select

    from .schema import tasks

    rows = conn.execute(
        select(tasks.c.agent, tasks.c.status, func.count().label("n"))
        .group_by(tasks.c.agent, tasks.c.status)
        .order_by(tasks.c.agent, tasks.c.status)
    ).all()
    return [{"agent": r.agent, "status": r.status, "tasks": int(r.n)} for r in rows]


def tool_counts(conn: Connection) -> dict[str, int]:
    """How many tool results every transcript holds, per tool name (delegations included)."""
    from sqlalchemy import func, select

    from .schema import messages

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
    from .schema import tasks

    took = tasks.c.finished_at - tasks.c.started_at
    finished = tasks.c.status.in_([s.value for s in TERMINAL]) & tasks.c.started_at.is_not(None)
    return histogram(conn, took, [tasks.c.agent], bounds, finished)


def histogram(
    conn: Connection, value: Any, keys: Sequence[Any], bounds: Sequence[float], where: Any
) -> list[dict[str, Any]]:
    """A cumulative histogram of ``value`` per ``keys`` in one query (see task_durations)."""
    from sqlalchemy import case, func, select

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
