"""Rich rendering for the CLI: run lists, task trees, transcripts, live work."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.tree import Tree

COLOURS = {
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
    "running": "cyan",
    "waiting": "blue",
    "paused": "yellow",
    "queued": "white",
}


def badge(status: str) -> str:
    return f"[{COLOURS.get(status, 'white')}]{status}[/]"


def tokens(usage: dict[str, Any]) -> str:
    text = f"{usage['total_tokens']:,} tok"
    if usage.get("cost_usd"):
        text += f" ${usage['cost_usd']:.4f}"
    if usage.get("estimated_calls"):
        text += " (est.)"
    return text


def print_runs(console: Console, runs: list[dict[str, Any]]) -> None:
    if not runs:
        console.print("no runs yet: harness submit GOAL, or harness run GOAL")
        return
    table = Table("run", "status", "agent", "tokens", "updated", "goal / reason")
    for r in runs:
        note = r["goal"][:70] + (
            ""
            if not r["reason"] or r["status"] == "done"
            else f"\n[dim]{escape(r['reason'][:100])}[/]"
        )
        table.add_row(
            str(r["id"]),
            badge(r["status"]),
            r["agent"],
            tokens(r["usage"]),
            r["updated_at"] or "",
            note,
        )
    console.print(table)


def task_tree(run: dict[str, Any]) -> Tree:
    goal = escape(run["goal"][:80])
    tree = Tree(f"run {run['id']} {badge(run['status'])} [dim]{goal}[/]  {tokens(run['usage'])}")

    def add(parent: Tree, node: dict[str, Any]) -> None:
        label = (
            f"task {node['id']} [bold]{node['agent']}[/] {badge(node['status'])} "
            f"{tokens(node['usage'])} steps={node['steps']}"
        )
        if node["status"] in ("failed", "paused", "cancelled") and (
            node["error"] or node["reason"]
        ):
            label += f"\n[dim]{escape(str(node['error'] or node['reason'])[:160])}[/]"
        branch = parent.add(label)
        for child in node["children"]:
            add(branch, child)

    for root in run["tasks"]:
        add(tree, root)
    return tree


def print_run(console: Console, run: dict[str, Any]) -> None:
    console.print(task_tree(run))
    if run.get("reason") and run["status"] not in ("done",):
        console.print(f"[yellow]why:[/] {escape(run['reason'])}")
    if run.get("answer"):
        console.print(Panel(escape(run["answer"]), title="answer"))
    if run.get("error"):
        console.print(Panel(escape(run["error"]), title="error", style="red"))


def print_transcript(console: Console, task_id: int, msgs: list[dict[str, Any]]) -> None:
    parts = []
    for m in msgs:
        body = escape(m.get("content") or "")
        for call in m.get("tool_calls", []):
            body += (
                f"\n[cyan]-> {call['name']}({escape(call['arguments'])})[/] [dim]{call['id']}[/]"
            )
        if m["role"] == "compaction":
            span = f"#{m['first_seq']}-#{m['last_seq']}"
            what = "summarised" if m["kind"] == "summary" else "results masked"
            title = f"[yellow]context compacted: {span} {what}[/]"
            parts.append(Panel(body, title=title, title_align="left", border_style="yellow"))
            continue
        title = (
            m["role"]
            if m["role"] != "tool"
            else f"tool result: {m.get('name')} [dim]{m.get('tool_call_id')}[/]"
        )
        if m.get("seq") is not None:
            title = f"[dim]#{m['seq']}[/] {title}"
        if "masked_as" in m:
            title += " [yellow](masked in what is sent)[/]"
        parts.append(Panel(body or "[dim](empty)[/]", title=title, title_align="left"))
    console.print(Group(*parts) if parts else f"task {task_id} has no transcript yet")


def print_live(console: Console, live: dict[str, Any]) -> None:
    if live["running"]:
        table = Table("task", "run", "agent", "age", "worker", title="running now")
        for r in live["running"]:
            table.add_row(
                str(r["task_id"]),
                str(r["run_id"]),
                r["agent"],
                f"{r['age_s']:.0f}s",
                str(r["worker_id"]),
            )
        console.print(table)
    if live["workers"]:
        table = Table("worker", "host", "pid", "slots", "last heartbeat", title="workers")
        for w in live["workers"]:
            table.add_row(
                str(w["id"]),
                w["host"],
                str(w["pid"]),
                str(w["concurrency"]),
                f"{w['heartbeat_age_s']:.0f}s ago",
            )
        console.print(table)
