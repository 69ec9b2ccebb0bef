"""``harness schedules list`` and ``harness report``: cron schedules and the morning report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import JsonOpt, budgets, err, fail, opened_store, out, print_json, workspace

if TYPE_CHECKING:
    from rich.console import Console

schedules_app = typer.Typer(
    rich_markup_mode=None,
    help="Cron schedules (the schedules section of config/harness.toml).",
    no_args_is_help=True,
)


@schedules_app.command("list")
def schedules_list(as_json: JsonOpt = False) -> None:
    """List schedules: cron, time zone, agent, last and next firing, last run."""
    from .. import clock, schedules

    ws = workspace()
    with opened_store(ws) as store:
        data = store.read_sync(schedules.describe, ws.settings, clock.now())
    if as_json:
        print_json(data)
    else:
        _schedules_table(out, data)


def _schedules_table(console: Console, data: list[dict[str, Any]]) -> None:
    from .display import table

    if not data:
        console.print("no schedules: add [[schedules]] to config/harness.toml", markup=False)
        return
    grid = table("name", "cron", "zone", "agent", "next", "last run")
    for s in data:
        last_run = "-"
        if s["last_run_id"] is not None:
            last_run = f"{s['last_run_id']} {s['last_run_status']}"
        overlap = " (queue)" if s["overlap"] == "queue" else ""
        grid.add_row(
            s["name"],
            s["cron"],
            s["timezone"],
            s["agent"] + overlap,
            _short(s["next_fire_at"]),
            last_run,
        )
    console.print(grid)


def _short(iso: str | None) -> str:
    """``2024-06-02 06:00`` from an ISO time (already in the schedule's zone)."""
    return iso[:16].replace("T", " ") if iso else "-"


def report_command(
    since: Annotated[
        str,
        typer.Option(help="Start: 12h, 2d, 30m, yesterday, or an ISO date or date/time."),
    ] = "12h",
    until: Annotated[
        str | None,
        typer.Option(help="End (default now): the same forms; a date includes its whole day."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the Markdown to FILE instead of stdout.")
    ] = None,
) -> None:
    """Write the morning report (Markdown) for the last 12 hours, or --since/--until.

    Runs finished, failed, paused and still running; tokens and cost per agent against
    budgets; retries and fallbacks; the slowest and the most expensive tasks.
    """
    from .. import clock, report

    ws = workspace()
    now = clock.now()
    try:
        start, end = clock.parse_period(since, until, now, ws.settings.tz)
    except ValueError as exc:
        fail(f"--since/--until: {exc}")
    assert start is not None
    limits = budgets(ws)
    with opened_store(ws) as store:
        text = store.read_sync(
            report.build_report, ws.settings, start, min(end or now, now), limits
        )
    if out_file is None:
        sys.stdout.write(text)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text, encoding="utf-8")
    err.print(f"wrote the report to {out_file}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(schedules_app, name="schedules")
    app.command("report")(report_command)
