"""``harness ledger``: where every token went, per day and agent, against budgets."""

from __future__ import annotations

import csv
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import (
    MAX_ID,
    budgets,
    fail,
    opened_reader,
    opened_store,
    out,
    print_json,
    workspace,
)

if TYPE_CHECKING:
    from rich.console import Console

    from ..settings import Workspace

ledger_app = typer.Typer(
    rich_markup_mode=None, help="Token ledger per day and agent; budgets; forecasts; pruning."
)


def _table(console: Console, data: list[dict[str, Any]], by_model: bool) -> None:
    from .display import table

    if not data:
        console.print("no ledger rows for this selection")
        return
    cols = [
        "day",
        "agent",
        *(["model"] if by_model else []),
        "calls",
        "input",
        "cached",
        "output",
        "cost $",
        "budget",
        "% used",
        "est.",
    ]
    grid = table(*cols)
    for r in data:
        budget = f"{r['budget_tokens']:,}" if r["budget_tokens"] is not None else "-"
        pct = f"{r['used_pct']:.1f}" if r["used_pct"] is not None else "-"
        grid.add_row(
            r["day"],
            r["agent"],
            *([r["model"]] if by_model else []),
            f"{r['calls']:,}",
            f"{r['prompt_tokens']:,}",
            f"{r['cached_tokens']:,}",
            f"{r['completion_tokens']:,}",
            f"{r['cost_usd']:.4f}",
            budget,
            pct,
            _estimated(r),
        )
    if len(data) > 1:
        grid.add_section()
        grid.add_row(*_totals(data, by_model), style="bold")
    console.print(grid)


def _estimated(r: dict[str, Any]) -> str:
    unsettled = f" (+{r['unsettled_calls']} unsettled)" if r["unsettled_calls"] else ""
    return f"{r['estimated_calls']}{unsettled}"


def _totals(data: list[dict[str, Any]], by_model: bool) -> list[str]:
    """The totals row: every count and the cost summed (budgets are per agent and day)."""

    def total(key: str) -> Any:
        return sum(r[key] for r in data)

    days = sorted({r["day"] for r in data})
    span = days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
    return [
        f"total {span}",
        f"{len({r['agent'] for r in data})} agents",
        *([""] if by_model else []),
        f"{total('calls'):,}",
        f"{total('prompt_tokens'):,}",
        f"{total('cached_tokens'):,}",
        f"{total('completion_tokens'):,}",
        f"{total('cost_usd'):.4f}",
        "",
        "",
        _estimated(
            {
                "estimated_calls": total("estimated_calls"),
                "unsettled_calls": total("unsettled_calls"),
            }
        ),
    ]


TIME_HELP = "today, yesterday, YYYY-MM-DD, or e.g. 7d (the last 7 days), 12h"


@ledger_app.callback(invoke_without_command=True)
def ledger(
    ctx: typer.Context,
    day: Annotated[str | None, typer.Option(help=f"One day: {TIME_HELP}.")] = None,
    since: Annotated[str | None, typer.Option(help=f"First day: {TIME_HELP}.")] = None,
    until: Annotated[str | None, typer.Option(help=f"Last day: {TIME_HELP}.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    run: Annotated[
        int | None, typer.Option(min=1, max=MAX_ID, help="Only calls of this run (all its tasks).")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Break down by: model.")] = None,
    forecast: Annotated[
        bool, typer.Option(help="When will each agent hit its budget at today's pace?")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array (documented in docs/cli.md).")
    ] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV with the same columns as --json.")
    ] = False,
) -> None:
    """Show the ledger: calls, input / cached / output tokens, cost, budget and % used, per
    day and agent, with a totals row."""
    if ctx.invoked_subcommand is not None:
        return
    from .. import clock
    from ..ledger import reads

    if by not in (None, "model"):
        fail(f"--by takes 'model', not {by!r}")
    if as_json and as_csv:
        fail("--json and --csv are two different outputs: give one")
    ws = workspace()
    since, until = _range(day, since, until, ws)
    limits = budgets(ws)
    if agent is not None and agent not in limits:
        _known_agent(ws, agent, limits)
    with opened_reader(ws) as store:
        if forecast:
            data = store.read_sync(reads.forecast, limits, ws.settings.tz)
        else:
            data = store.read_sync(
                reads.rows,
                limits,
                since=since,
                until=until,
                agent=agent,
                run_id=run,
                by_model=by == "model",
            )
    if as_json:
        print_json(data)
    elif as_csv:
        if data:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    elif forecast:
        _forecast_table(out, data, clock.now())
    else:
        _table(out, data, by == "model")


def _range(
    day: str | None, since: str | None, until: str | None, ws: Workspace
) -> tuple[str | None, str | None]:
    from .. import clock

    try:
        return clock.period_days(day, since, until, clock.now(), ws.settings.tz)
    except ValueError as exc:
        fail(f"--day/--since/--until: {exc}")


def _known_agent(ws: Workspace, agent: str, limits: dict[str, Any]) -> None:
    """Fail naming the known agents, unless the ledger holds rows of ``agent`` (one whose
    file is gone still has its history)."""
    from ..ledger import reads

    with opened_reader(ws) as store:
        rows = store.read_sync(reads.rows, {}, agent=agent)
    if not rows:
        fail(f"unknown agent {agent!r} (known: {', '.join(sorted(limits)) or 'none'})")


def _forecast_table(console: Console, data: list[dict[str, Any]], now: float) -> None:
    from datetime import datetime

    from .display import ago, table

    grid = table("agent", "used today", "budget", "tokens/hour", "hits budget at")
    for r in data:
        when = "exhausted" if r["exhausted"] else (r["hits_budget_at"] or "not today")
        if r["hits_budget_at"] and not r["exhausted"]:
            at = datetime.fromisoformat(r["hits_budget_at"]).timestamp()
            when += f" ({ago(now - at)})"
        grid.add_row(
            r["agent"],
            f"{r['used_tokens']:,}",
            f"{r['budget_tokens']:,}",
            f"{r['tokens_per_hour']:,.0f}",
            when,
        )
    console.print(grid)


@ledger_app.command("prune")
def prune(
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than",
            min=1,
            max=100_000,
            help="Days of call rows to keep (default: config ledger_retention_days).",
        ),
    ] = None,
) -> None:
    """Delete call rows older than the retention; the daily roll-ups stay."""
    from .. import clock, ledger

    ws = workspace()
    keep = older_than or ws.settings.ledger_retention_days
    if not keep:
        fail("give --older-than DAYS or set ledger_retention_days in config/harness.toml")
    cutoff = ledger.days_back(ledger.day_of(clock.now(), ws.settings.tz), keep)
    with opened_store(ws) as store:
        n = store.write_sync(ledger.prune, cutoff)
    out.print(f"pruned {n} call rows before {cutoff}; daily roll-ups kept")


def print_ledger_for_run(ws: Workspace, run_id: int, console: Console) -> None:
    from ..ledger import reads

    with opened_reader(ws) as store:
        data = store.read_sync(reads.rows, budgets(ws), run_id=run_id)
    console.print(f"\nledger for run {run_id}:")
    _table(console, data, False)


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
