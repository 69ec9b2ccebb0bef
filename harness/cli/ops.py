"""``harness schedules list`` and ``harness report``: cron schedules and the morning report."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import typer

from ._common import JsonOpt, budgets, err, fail, opened_store, out, print_json, workspace

if TYPE_CHECKING:
    from rich.console import Console

schedules_app = typer.Typer(
    rich_markup_mode=None,
    help="Cron schedules (the schedules section of config/harness.toml).",
    no_args_is_help=True,
)

UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float, tz: ZoneInfo) -> float:
    """``12h``, ``2d``, ``30m``, ``1w`` before ``now``, or an ISO date/time (in ``tz`` when it
    has no offset). Raises ValueError with a readable message."""
    m = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if m:
        return now - int(m.group(1)) * UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration (12h, 2d) or ISO date/time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    start = when.timestamp()
    if start > now:
        raise ValueError(f"{text!r} is in the future")
    return start


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
    from rich.table import Table

    if not data:
        console.print("no schedules: add [[schedules]] to config/harness.toml", markup=False)
        return
    table = Table("name", "cron", "zone", "agent", "next", "last run")
    for i in (0, 1, 4):
        table.columns[i].no_wrap = True
    table.columns[2].overflow = "fold"
    for s in data:
        last_run = "-"
        if s["last_run_id"] is not None:
            last_run = f"{s['last_run_id']} {s['last_run_status']}"
        overlap = " (queue)" if s["overlap"] == "queue" else ""
        table.add_row(
            s["name"],
            s["cron"],
            s["timezone"],
            s["agent"] + overlap,
            _short(s["next_fire_at"]),
            last_run,
        )
    console.print(table)


def _short(iso: str | None) -> str:
    """``2024-06-02 06:00`` from an ISO time (already in the schedule's zone)."""
    return iso[:16].replace("T", " ") if iso else "-"


def report_command(
    since: Annotated[
        str, typer.Option(help="Start of the period: 12h, 2d, 30m, or an ISO date/time.")
    ] = "12h",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the Markdown to FILE instead of stdout.")
    ] = None,
) -> None:
    """Write the morning report (Markdown) for the last 12 hours, or since --since.

    Runs finished, failed, paused and still running; tokens and cost per agent against
    budgets; retries and fallbacks; the slowest and the most expensive tasks.
    """
    from .. import clock, report

    ws = workspace()
    now = clock.now()
    try:
        start = parse_since(since, now, ws.settings.tz)
    except ValueError as exc:
        fail(f"--since: {exc}")
    limits = budgets(ws)
    with opened_store(ws) as store:
        text = store.read_sync(report.build_report, ws.settings, start, now, limits)
    if out_file is None:
        sys.stdout.write(text)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text, encoding="utf-8")
    err.print(f"wrote the report to {out_file}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(schedules_app, name="schedules")
    app.command("report")(report_command)
