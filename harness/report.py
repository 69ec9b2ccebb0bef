"""The morning report: what happened between ``since`` and ``now``, as Markdown.

Sections, in order: runs finished, failed or cancelled, paused (with the reason), still
running; tokens and cost per agent against budgets; retries and fallbacks; the slowest and the
most expensive tasks. Everything is sorted, so a known history gives a known report.

The window is inclusive at both ends. Runs count as finished (or failed) in the window when
their root task finished in it; unfinished runs are listed whatever their age (created at or
before ``now``). Token figures come from the ledger's call rows with ``since <= ts <= now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, func, select

from . import scrub
from .settings import Settings
from .store import views
from .store.schema import TERMINAL, TaskStatus, calls, runs, tasks
from .usage import Budget

ANSWER_CHARS = 1500
ERROR_CHARS = 300
TOP = 5
MAX_ERRORS = 20


def build_report(
    conn: Connection,
    settings: Settings,
    since: float,
    now: float,
    budgets: Mapping[str, Budget] | None = None,
) -> str:
    """The report for ``since <= t <= now`` as Markdown; ``budgets`` maps agent -> daily budget.
    Models' and tools' words in it are redacted and free of terminal control characters
    (:func:`harness.scrub.shown`): it is printed, written to files and served."""
    tz = settings.tz
    groups = _run_groups(conn, since, now)
    usage = _agent_usage(conn, since, now)
    parts = [
        _header(settings, since, now, groups, usage),
        *(_run_section(title, rows, tz) for title, rows in groups.items()),
        _agent_section(usage, budgets or {}, since, now, tz),
        _retry_section(conn, since, now, tz),
        _slowest_section(conn, since, now),
        _expensive_section(conn, since, now),
    ]
    return scrub.shown("\n\n".join(parts) + "\n")


# -- formatting helpers ----------------------------------------------------------------------


def _time(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s" if m else f"{s}s"


def _trim(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at the last line break (else space) in the final
    fifth, with a note saying how long the whole text is."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head, floor = text[:limit], limit * 4 // 5
    cut = head.rfind("\n")
    if cut < floor:
        cut = head.rfind(" ")
    if cut >= floor:
        head = head[:cut]
    return head.rstrip() + f"\n… (trimmed: {len(text):,} characters in all)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines() or [""])


def _one_line(text: str, limit: int = 100) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right_from: int = 1) -> str:
    aligns = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _money(x: float) -> str:
    return f"${x:.4f}"


# -- runs --------------------------------------------------------------------------------------

FINISHED, FAILED, PAUSED, RUNNING = "Finished", "Failed or cancelled", "Paused", "Still running"


def _run_groups(conn: Connection, since: float, now: float) -> dict[str, list[dict[str, Any]]]:
    root = tasks.alias("root")
    ended = and_(root.c.status.in_([s.value for s in TERMINAL]), root.c.finished_at >= since)
    ended = and_(ended, root.c.finished_at <= now)
    open_ = and_(root.c.status.not_in([s.value for s in TERMINAL]), runs.c.created_at <= now)
    rows = conn.execute(
        select(runs.c.id, root.c.status, root.c.started_at, root.c.finished_at)
        .join(root, root.c.id == runs.c.root_task_id)
        .where(ended | open_)
        .order_by(runs.c.id)
    ).all()
    paused = set(
        conn.execute(select(tasks.c.run_id).where(tasks.c.status == TaskStatus.PAUSED)).scalars()
    )
    groups: dict[str, list[dict[str, Any]]] = {FINISHED: [], FAILED: [], PAUSED: [], RUNNING: []}
    for r in rows:
        run = views.get_run(conn, r.id) or {}
        run.update(started=r.started_at, finished=r.finished_at)
        if r.status == TaskStatus.DONE:
            groups[FINISHED].append(run)
        elif r.status in TERMINAL:
            groups[FAILED].append(run)
        elif r.status == TaskStatus.PAUSED or r.id in paused:
            groups[PAUSED].append(run)
        else:
            groups[RUNNING].append(run)
    return groups


def _run_facts(run: dict[str, Any], tz: ZoneInfo) -> str:
    usage = run["usage"]
    facts = [f"agent {run['agent']}", run["status"]]
    if run["finished"] is not None:
        facts[-1] += f" {_time(run['finished'], tz)}"
        if run["started"] is not None:
            facts.append(f"took {_duration(run['finished'] - run['started'])}")
    facts.append(f"{usage['total_tokens']:,} tokens")
    facts.append(_money(usage["cost_usd"]))
    if run["schedule"]:
        facts.append(f"schedule {run['schedule']}")
    return " · ".join(facts)


def _run_entry(run: dict[str, Any], tz: ZoneInfo) -> str:
    lines = [f"### Run {run['id']}: {_one_line(run['goal'])}", "", _run_facts(run, tz)]
    status = run["status"]
    if status == TaskStatus.DONE:
        lines += ["", _quote(_trim(run["answer"] or "(no answer)", ANSWER_CHARS))]
    elif status == TaskStatus.FAILED:
        why = run["error"] or run["reason"] or "(no error recorded)"
        lines += ["", "Error:", "", _quote(_trim(why, ANSWER_CHARS))]
    elif status in TERMINAL:
        lines += ["", f"Why: {_one_line(run['reason'] or 'cancelled', ERROR_CHARS)}"]
    elif run["reason"]:
        lines += ["", f"Why: {_one_line(run['reason'], ERROR_CHARS)}"]
    return "\n".join(lines)


def _run_section(title: str, group: list[dict[str, Any]], tz: ZoneInfo) -> str:
    head = f"## {title} ({len(group)})"
    if not group:
        return head + "\n\nNone."
    return "\n\n".join([head, *(_run_entry(run, tz) for run in group)])


def _header(
    settings: Settings,
    since: float,
    now: float,
    groups: Mapping[str, list[dict[str, Any]]],
    usage: list[dict[str, Any]],
) -> str:
    tz = settings.tz
    counts = ", ".join(f"{len(groups[g])} {g.lower()}" for g in groups)
    n_calls = sum(u["calls"] for u in usage)
    tokens = sum(u["total"] for u in usage)
    cost = sum(u["cost"] for u in usage)
    return "\n".join(
        [
            "# Morning report",
            "",
            f"Period: {_time(since, tz)} to {_time(now, tz)} ({settings.timezone})",
            "",
            f"Runs: {counts}.",
            f"Model calls: {n_calls:,}, {tokens:,} tokens, {_money(cost)}.",
        ]
    )


# -- tokens and budgets ------------------------------------------------------------------------


def _in_window(since: float, now: float) -> Any:
    return and_(calls.c.ts >= since, calls.c.ts <= now)


def _agent_usage(conn: Connection, since: float, now: float) -> list[dict[str, Any]]:
    c = calls.c
    rows = conn.execute(
        select(
            c.agent,
            func.count().label("calls"),
            func.sum(c.prompt_tokens).label("prompt"),
            func.sum(c.cached_tokens).label("cached"),
            func.sum(c.completion_tokens).label("completion"),
            func.sum(c.cost_usd).label("cost"),
        )
        .where(_in_window(since, now))
        .group_by(c.agent)
        .order_by(c.agent)
    ).all()
    keys = ("calls", "prompt", "cached", "completion")
    out = []
    for r in rows:
        u: dict[str, Any] = {"agent": r.agent, **{k: int(getattr(r, k) or 0) for k in keys}}
        out.append(u | {"total": u["prompt"] + u["completion"], "cost": float(r.cost or 0.0)})
    return out


def _days(since: float, now: float, tz: ZoneInfo) -> tuple[str, str, int]:
    first = datetime.fromtimestamp(since, tz).date()
    last = datetime.fromtimestamp(now, tz).date()
    return first.isoformat(), last.isoformat(), (last - first) // timedelta(days=1) + 1


def _share(used: float, limit: float | None, days: int, money: bool) -> str:
    if limit is None:
        return "-"
    total = limit * days
    pct = f"{100.0 * used / total:.1f}%" if total else "n/a"
    return f"{pct} of {_money(total) if money else f'{int(total):,}'}"


def _agent_section(
    usage: list[dict[str, Any]],
    budgets: Mapping[str, Budget],
    since: float,
    now: float,
    tz: ZoneInfo,
) -> str:
    head = "## Tokens and cost by agent"
    if not usage:
        return head + "\n\nNo model calls in this period."
    first, last, days = _days(since, now, tz)
    note = (
        f"Budgets are daily; this period touches {_plural(days, 'day')} ({first} to {last}), "
        f"so each daily budget counts {_plural(days, 'time')}."
    )
    counts = ("calls", "prompt", "cached", "completion", "total")
    rows = []
    for u in usage:
        b = budgets.get(u["agent"], Budget())
        tokens = _share(u["total"], b.tokens, days, money=False)
        cost = _share(u["cost"], b.cost_usd, days, money=True)
        rows.append([u["agent"], *(f"{u[k]:,}" for k in counts), _money(u["cost"]), tokens, cost])
    sums = [f"{sum(u[k] for u in usage):,}" for k in counts]
    rows.append(["**all**", *sums, _money(sum(u["cost"] for u in usage)), "", ""])
    header = ["agent", "calls", "input", "cached", "output", "total", "cost", "tokens of budget"]
    table = _table([*header, "cost of budget"], rows)
    return "\n\n".join([head, note, table])


# -- retries, fallbacks, slow and expensive tasks ------------------------------------------------


def _problem_calls(conn: Connection, since: float, now: float) -> list[Any]:
    """Call rows that failed, were retried or are unsettled, plus the rows recorded with them
    (same task and timestamp: one model call's attempts), in id order."""
    c = calls.c
    base = select(calls).where(_in_window(since, now))
    bad = conn.execute(base.where((c.outcome != "ok") | (c.attempt > 1)).order_by(c.id)).all()
    keys = {(r.task_id, r.ts) for r in bad if r.outcome == "error"}
    if not keys:
        return list(bad)
    ok = conn.execute(
        base.where(c.outcome == "ok", c.attempt == 1, c.ts.in_(sorted({ts for _, ts in keys})))
    ).all()
    extra = [r for r in ok if (r.task_id, r.ts) in keys]
    return sorted([*bad, *extra], key=lambda r: r.id)


def _fallbacks(rows: list[Any]) -> list[tuple[Any, str]]:
    """``(ok_row, first_model)`` for each call answered by another model than the one tried
    first, after that one failed (as far as the ledger shows: attempts that never reached a
    server leave no row)."""
    batches: dict[tuple[Any, float], list[Any]] = {}
    for r in rows:
        batches.setdefault((r.task_id, r.ts), []).append(r)
    out = []
    for batch in batches.values():
        first = batch[0].model
        if any(r.outcome == "error" for r in batch):
            out += [(r, first) for r in batch if r.outcome == "ok" and r.model != first]
    return sorted(out, key=lambda pair: pair[0].id)


def _retry_section(conn: Connection, since: float, now: float, tz: ZoneInfo) -> str:
    head = "## Retries and fallbacks"
    rows = _problem_calls(conn, since, now)
    errors = [r for r in rows if r.outcome == "error"]
    retried = [r for r in rows if r.attempt > 1]
    unsettled = [r for r in rows if r.outcome == "unsettled"]
    fallbacks = _fallbacks(rows)
    if not (errors or retried or unsettled or fallbacks):
        return head + "\n\nNo failed attempts, retries, fallbacks or unsettled calls."
    parts = [
        head,
        "\n".join(
            [
                f"- Failed attempts (the server answered with an error): {len(errors)}",
                f"- Attempts after a retry (attempt 2 or later): {len(retried)}",
                f"- Fallbacks (answered by another model than the one tried first): "
                f"{len(fallbacks)}",
                f"- Unsettled calls (in flight when their worker died): {len(unsettled)}",
            ]
        ),
    ]
    if errors:
        shown = [_error_line(r, tz) for r in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            shown.append(f"- … and {len(errors) - MAX_ERRORS} more")
        parts += ["Failed attempts:", "\n".join(shown)]
    if fallbacks:
        lines = [
            f"- {_time(r.ts, tz)} task {r.task_id} ({r.agent}): {first} -> {r.model}"
            for r, first in fallbacks
        ]
        parts += ["Fallbacks:", "\n".join(lines)]
    return "\n\n".join(parts)


def _error_line(r: Any, tz: ZoneInfo) -> str:
    status = f", HTTP {r.http_status}" if r.http_status is not None else ""
    where = f"task {r.task_id} " if r.task_id is not None else ""
    detail = _one_line(r.error or "no detail", ERROR_CHARS)
    return (
        f"- {_time(r.ts, tz)} {where}({r.agent}) {r.model}, attempt {r.attempt}{status}: {detail}"
    )


def _slowest_section(conn: Connection, since: float, now: float) -> str:
    t = tasks.c
    took = (t.finished_at - t.started_at).label("took")
    rows = conn.execute(
        select(t.id, t.run_id, t.agent, t.status, took)
        .where(t.finished_at >= since, t.finished_at <= now, t.started_at.is_not(None))
        .order_by(took.desc(), t.id)
        .limit(TOP)
    ).all()
    head = "## Slowest tasks"
    if not rows:
        return head + "\n\nNo tasks finished in this period."
    body = [[str(r.id), str(r.run_id), r.agent, r.status, _duration(r.took)] for r in rows]
    return head + "\n\n" + _table(["task", "run", "agent", "status", "took"], body, right_from=4)


def _expensive_section(conn: Connection, since: float, now: float) -> str:
    c = calls.c
    cost = func.sum(c.cost_usd).label("cost")
    tokens = func.sum(c.prompt_tokens + c.completion_tokens).label("tokens")
    rows = conn.execute(
        select(c.task_id, c.run_id, c.agent, func.count().label("calls"), tokens, cost)
        .where(_in_window(since, now), c.task_id.is_not(None))
        .group_by(c.task_id, c.run_id, c.agent)
        .order_by(cost.desc(), tokens.desc(), c.task_id)
        .limit(TOP)
    ).all()
    head = "## Most expensive tasks"
    if not rows:
        return head + "\n\nNo model calls in this period."
    body = [_cost_row(r) for r in rows]
    header = ["task", "run", "agent", "calls", "tokens", "cost"]
    return head + "\n\n" + _table(header, body, right_from=3)


def _cost_row(r: Any) -> list[str]:
    tokens, cost = int(r.tokens or 0), float(r.cost or 0.0)
    return [str(r.task_id), str(r.run_id), r.agent, f"{r.calls:,}", f"{tokens:,}", _money(cost)]
