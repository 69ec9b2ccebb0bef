"""Rich rendering for the CLI: run lists, task trees, transcripts, live work.

Nothing is cropped: long text wraps inside its table cell, tree label or panel (``--full``
prints the same as plain text, ``--json`` as data). Every text that came from a model, a
tool or the database goes through :func:`safe` first: secrets redacted, terminal control
characters made visible, Rich markup escaped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.tree import Tree

from ..scrub import shown

COLOURS = {
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
    "running": "cyan",
    "waiting": "blue",
    "paused": "yellow",
    "queued": "white",
}


def safe(value: object) -> str:
    """``value`` as Rich markup that prints exactly its (redacted, printable) text."""
    return escape(shown(str(value)))


def table(*headers: str, **options: Any) -> Table:
    """A table whose cells wrap, and fold what cannot wrap: nothing is cut off (Rich's
    default puts an ellipsis in a cell that does not fit)."""
    grid = Table(*headers, **options)
    for column in grid.columns:
        column.overflow = "fold"
    return grid


def badge(status: str) -> str:
    return f"[{COLOURS.get(status, 'white')}]{safe(status)}[/]"


def tokens(usage: dict[str, Any]) -> str:
    text = f"{usage['total_tokens']:,} tok"
    if usage.get("cost_usd"):
        text += f" ${usage['cost_usd']:.4f}"
    if usage.get("estimated_calls"):
        text += " (est.)"
    return text


def ago(seconds: float) -> str:
    """``7s ago``, ``12m ago``, ``3h ago``, ``2d ago`` (``in 5s`` for a time ahead)."""
    n = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if n >= size:
            amount = f"{int(n // size)}{unit}"
            break
    else:
        amount = f"{int(n)}s"
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"


def when(iso: str | None, now: float) -> str:
    """An ISO time as ``2024-06-02 06:00:12 UTC (7s ago)``; ``-`` for none."""
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso)
    return f"{at:%Y-%m-%d %H:%M:%S %Z} ({ago(now - at.timestamp())})"


def print_runs(console: Console, runs: list[dict[str, Any]], now: float) -> None:
    if not runs:
        console.print("no runs yet: harness submit GOAL, or harness run GOAL")
        return
    grid = table("run", "status", "agent", "tokens", "updated", "goal / reason")
    for r in runs:
        note = safe(r["goal"])
        if r["reason"] and r["status"] != "done":
            note += f"\n[dim]{safe(r['reason'])}[/]"
        grid.add_row(
            str(r["id"]),
            badge(r["status"]),
            safe(r["agent"]),
            tokens(r["usage"]),
            when(r["updated_at"], now),
            note,
        )
    console.print(grid)


def task_tree(run: dict[str, Any]) -> Tree:
    root = f"run {run['id']} {badge(run['status'])} [dim]{safe(run['goal'])}[/]"
    tree = Tree(f"{root}  {tokens(run['usage'])}")

    def add(parent: Tree, node: dict[str, Any]) -> None:
        label = (
            f"task {node['id']} [bold]{safe(node['agent'])}[/] {badge(node['status'])} "
            f"{tokens(node['usage'])} steps={node['steps']}"
        )
        if node["status"] in ("failed", "paused", "cancelled") and (
            node["error"] or node["reason"]
        ):
            label += f"\n[dim]{safe(node['error'] or node['reason'])}[/]"
        branch = parent.add(label)
        for child in node["children"]:
            add(branch, child)

    for task in run["tasks"]:
        add(tree, task)
    return tree


def specialists(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The root task's sub-tasks that settled with a result or an error, in order."""
    roots = run["tasks"][:1]
    return [c for r in roots for c in r["children"] if c["result"] or c["error"]]


def _outcome(task: dict[str, Any]) -> str:
    if task["status"] == "done":
        return str(task["result"] or "")
    return f"{task['status']}: {task['error'] or task['reason'] or 'no reason given'}"


def print_run(console: Console, run: dict[str, Any], now: float) -> None:
    """The task tree, when it started and last moved, why it is stuck, its answer (or error)
    and, under it, what each specialist handed back."""
    console.print(task_tree(run))
    created, updated = when(run["created_at"], now), when(run["updated_at"], now)
    console.print(f"[dim]created {created}, updated {updated}[/]", highlight=False)
    if run.get("reason") and run["status"] not in ("done",):
        console.print(f"[yellow]why:[/] {safe(run['reason'])}")
    if run.get("answer"):
        console.print(Panel(safe(run["answer"]), title="answer", title_align="left"))
    if run.get("error"):
        console.print(Panel(safe(run["error"]), title="error", title_align="left", style="red"))
    for task in specialists(run):
        title = f"{safe(task['agent'])} (task {task['id']}, {badge(task['status'])})"
        console.print(Panel(safe(_outcome(task)), title=title, title_align="left"))


def plain_run(run: dict[str, Any]) -> str:
    """Every task of the run in full, as plain text (``show --full``): status, input,
    result or error, children indented under their parent."""
    lines = [f"run {run['id']} {run['status']} {tokens(run['usage'])}", f"goal: {run['goal']}"]
    if run.get("reason") and run["status"] != "done":
        lines.append(f"why: {run['reason']}")

    def add(node: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        lines.append("")
        lines.append(
            f"{pad}task {node['id']} {node['agent']} {node['status']} "
            f"{tokens(node['usage'])} steps={node['steps']} attempts={node['attempts']}"
        )
        for key in ("input", "result", "error", "reason"):
            if node[key]:
                text = str(node[key]).replace("\n", "\n" + pad + "  ")
                lines.append(f"{pad}{key}: {text}")
        for child in node["children"]:
            add(child, depth + 1)

    for task in run["tasks"]:
        add(task, 0)
    return shown("\n".join(lines)) + "\n"


def print_transcript(console: Console, task_id: int, msgs: list[dict[str, Any]]) -> None:
    parts = []
    for m in msgs:
        body = safe(m.get("content") or "")
        for call in m.get("tool_calls", []):
            body += (
                f"\n[cyan]-> {safe(call['name'])}({safe(call['arguments'])})[/] "
                f"[dim]{safe(call['id'])}[/]"
            )
        if m["role"] == "compaction":
            span = f"#{m['first_seq']}-#{m['last_seq']}"
            what = "summarised" if m["kind"] == "summary" else "results masked"
            title = f"[yellow]context compacted: {span} {what}[/]"
            parts.append(Panel(body, title=title, title_align="left", border_style="yellow"))
            continue
        title = (
            safe(m["role"])
            if m["role"] != "tool"
            else f"tool result: {safe(m.get('name'))} [dim]{safe(m.get('tool_call_id'))}[/]"
        )
        if m.get("seq") is not None:
            title = f"[dim]#{m['seq']}[/] {title}"
        if "masked_as" in m:
            title += " [yellow](masked in what is sent)[/]"
        parts.append(Panel(body or "[dim](empty)[/]", title=title, title_align="left"))
    console.print(Group(*parts) if parts else f"task {task_id} has no transcript yet")


def plain_transcript(msgs: list[dict[str, Any]]) -> str:
    """A transcript as plain text (``show --task N --full``)."""
    lines = []
    for m in msgs:
        if m["role"] == "compaction":
            what = "summarised" if m["kind"] == "summary" else "results masked"
            lines += [f"--- context compacted: {m['first_seq']}-{m['last_seq']} {what}"]
            lines += [m.get("content") or ""]
            continue
        head = f"--- {m['seq']} {m['role']}" if m["seq"] is not None else f"--- {m['role']}"
        if m["role"] == "tool":
            head += f" {m.get('name')} {m.get('tool_call_id')}"
        lines += [head, m.get("content") or ""]
        for call in m.get("tool_calls", []):
            lines.append(f"-> {call['name']}({call['arguments']}) {call['id']}")
    return shown("\n".join(lines)) + "\n"


def print_live(console: Console, live: dict[str, Any], limit: int) -> None:
    """The tasks running now, longest-running first, at most ``limit`` of them (a line says
    how many more there are), then the live workers."""
    running = sorted(live["running"], key=lambda r: (-r["age_s"], r["task_id"]))
    if running:
        more = len(running) - limit
        caption = f"{more} more running: --limit {len(running)} shows all" if more > 0 else None
        grid = table(
            "task", "run", "agent", "running for", "worker", title="running now", caption=caption
        )
        for r in running[:limit]:
            grid.add_row(
                str(r["task_id"]),
                str(r["run_id"]),
                safe(r["agent"]),
                ago(r["age_s"]).removesuffix(" ago"),
                str(r["worker_id"]),
            )
        console.print(grid)
    if live["workers"]:
        grid = table("worker", "host", "pid", "slots", "last heartbeat", title="workers")
        for w in live["workers"]:
            grid.add_row(
                str(w["id"]),
                safe(w["host"]),
                str(w["pid"]),
                str(w["concurrency"]),
                ago(w["heartbeat_age_s"]),
            )
        console.print(grid)
