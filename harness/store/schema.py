"""Every table, in one place (SQLAlchemy Core). Migrations live in ``harness/migrations``.

Times are stored as float seconds since the epoch (UTC): cheap to compare on every dialect.
Days (``day``) are ISO dates in the workspace's configured time zone.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# re-exported: statuses live in .status, importable without SQLAlchemy
from .status import TERMINAL as TERMINAL
from .status import WORKSPACE as WORKSPACE
from .status import TaskStatus as TaskStatus

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


USAGE_COUNTERS = (
    "calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "estimated_calls",
)


def usage_columns() -> list[Column[int] | Column[float]]:
    """The roll-up counters shared by ``runs`` and ``usage_daily`` (fresh Column objects)."""
    # 64-bit: a busy workspace passes 2**31 tokens (PostgreSQL's INTEGER) within days
    counters: list[Column[int] | Column[float]] = [
        Column(name, BigInteger, nullable=False, default=0) for name in USAGE_COUNTERS
    ]
    return [*counters, Column("cost_usd", Float, nullable=False, default=0.0)]


workers = Table(
    "workers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # the epoch: fresh per start
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("node", String(128)),  # boot id, PID namespace and start time (see store.workers)
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float),
    Column("concurrency", Integer, nullable=False, default=1),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("goal", Text, nullable=False),
    Column("agent", String(64), nullable=False),
    Column("root_task_id", Integer),
    Column("schedule", String(128)),
    Column("created_at", Float, nullable=False),
    # roll-up of every call made by any task of the run (kept in the call's transaction)
    *usage_columns(),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", Integer, ForeignKey("tasks.id")),
    Column("parent_call_id", String(128)),  # the parent's delegate tool call that made it
    Column("agent", String(64), nullable=False),
    Column("input", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text),
    Column("priority", Integer, nullable=False, default=0),
    Column("depth", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("lease_owner", Integer),
    Column("lease_expires_at", Float),
    # claims so far: (lease_owner, claims) fences every write of one claim, so a worker that
    # claims its own reaped task again cannot have two runners pass as the owner
    Column("claims", Integer, nullable=False, default=0, server_default="0"),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("pause_budget", Text),  # the budget (JSON) that paused it; a change wakes it
    Column("steps", Integer, nullable=False, default=0),
    Column("result", Text),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    UniqueConstraint("parent_id", "parent_call_id"),
    Index(None, "run_id"),
    Index(None, "lease_owner"),
)

# the claim order (priority first, then age) walks this index instead of sorting the queue
Index("ix_tasks_claim", tasks.c.status, tasks.c.priority.desc(), tasks.c.id)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text),
    Column("tool_calls", Text),  # JSON list, as on the wire
    Column("tool_call_id", String(128)),
    Column("name", String(128)),
    Column("call_id", Integer),  # the ledger row of the model call that produced it
    Column("created_at", Float, nullable=False),
    UniqueConstraint("task_id", "seq"),
)

calls = Table(
    "calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("run_id", Integer),
    Column("task_id", Integer),
    Column("agent", String(64), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("ttft_ms", Float),
    Column("attempt", Integer, nullable=False, default=1),
    Column("http_status", Integer),
    Column("estimated", Boolean, nullable=False, default=False),
    Column("outcome", String(16), nullable=False),
    # what the call was for: a task's step, or the summary that compacts its context
    Column("kind", String(16), nullable=False, default="step", server_default="step"),
    Column("error", Text),
    # the reservation the call settled: an unsettled row is replaced by the late answer; a
    # write retried after a commit whose outcome was unknown finds the rows it wrote
    Column("reservation_id", Integer),
    Index(None, "day", "agent"),
    Index(None, "reservation_id"),
    Index(None, "task_id"),
    Index(None, "run_id"),
    Index(None, "ts"),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("agent", String(64), primary_key=True),  # WORKSPACE ("*") sums all agents
    *usage_columns(),
    Column("unsettled_calls", Integer, nullable=False, default=0),
    Column("error_calls", Integer, nullable=False, default=0),
    Column("reserved_tokens", BigInteger, nullable=False, default=0),
    Column("reserved_cost", Float, nullable=False, default=0.0),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("day", String(10), nullable=False),
    Column("agent", String(64), nullable=False),
    Column("run_id", Integer),
    Column("task_id", Integer),
    Column("worker_id", Integer),
    Column("model", String(128), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("cost", Float, nullable=False, default=0.0),
    Column("created_at", Float, nullable=False),
    Column("key", String(32)),  # the caller's: a retried reservation finds the one it took
    Index(None, "worker_id"),
    Index(None, "key", unique=True),
    sqlite_autoincrement=True,  # never reuse an id: a stale holder must not free another's
)

# a large tool (or sub-task) result, kept whole; the transcript holds its head and a pointer
artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("tool_call_id", String(128)),
    Column("name", String(128)),  # the tool that produced it
    Column("content", Text, nullable=False),
    Column("chars", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("task_id", "tool_call_id"),
)

# a task's context compacted: in what is sent to the model, messages first_seq..last_seq are
# replaced by the summary ("summary"), or their tool results by one-line stubs ("mask"); the
# transcript keeps every message
compactions = Table(
    "compactions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("first_seq", Integer, nullable=False),
    Column("last_seq", Integer, nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("call_id", Integer),  # the ledger row of the summary call
    Column("created_at", Float, nullable=False),
    UniqueConstraint("task_id", "kind", "last_seq"),
)

# what harness has learned about a model from its calls: how its server counts tokens
# against the estimate, and the context window its errors revealed
model_stats = Table(
    "model_stats",
    metadata,
    Column("model", String(128), primary_key=True),
    Column("estimate_ratio", Float, nullable=False, default=1.0),  # reported / estimated
    Column("samples", Integer, nullable=False, default=0),
    Column("new_ratio", Float, nullable=False, default=1.0),  # of what steps append
    Column("new_samples", Integer, nullable=False, default=0),
    Column("context_window", Integer),  # the observed limit, when smaller than configured
    Column("updated_at", Float, nullable=False),
)

notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("agent", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index(None, "agent", "id"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("last_fire_at", Float),  # the cron instant last fired (not the wall time it ran)
    Column("last_run_id", Integer),
)
