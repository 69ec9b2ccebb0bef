"""``harness mcp list|serve``: the MCP servers agents use, and harness as an MCP server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import EXIT_FAILED, JsonOpt, fail, out, print_json, quiet, workspace

if TYPE_CHECKING:
    from rich.console import Console

mcp_app = typer.Typer(
    rich_markup_mode=None,
    help="MCP: the servers agents take tools from (list), and harness as a server (serve).",
    no_args_is_help=True,
)


@mcp_app.command("list")
def mcp_list(as_json: JsonOpt = False) -> None:
    """Start each configured MCP server and show its status and tools (after include and
    exclude); exit 1 when a server is unavailable."""
    import anyio

    from ..tools.mcp_pool import McpPool

    quiet()
    ws = workspace()
    if not ws.settings.mcp.servers:
        fail("no MCP servers configured (add [mcp.servers.NAME] to config/harness.toml)")

    async def status() -> list[dict[str, Any]]:
        pool = McpPool(ws)
        try:
            return await pool.status()
        finally:
            await pool.aclose()

    rows = anyio.run(status)
    if as_json:
        print_json(rows)
    else:
        _print_servers(out, rows)
    if any(r["status"] != "up" for r in rows):
        raise typer.Exit(EXIT_FAILED)


def _print_servers(console: Console, rows: list[dict[str, Any]]) -> None:
    from ..scrub import shown
    from .display import safe, table

    for row in rows:
        state = "[green]up[/green]" if row["status"] == "up" else "[red]unavailable[/red]"
        console.print(f"[bold]{safe(row['server'])}[/bold] ({row['transport']}) {state}: ", end="")
        console.print(shown(row["target"]), markup=False, highlight=False)
        if row["error"]:
            console.print(f"  {shown(row['error'])}", markup=False, highlight=False)
        if row["tools"]:
            grid = table("tool (as agents name it)", "server's name", "description")
            for t in row["tools"]:
                summary = (t["description"].strip().splitlines() or [""])[0]
                grid.add_row(safe(t["name"]), safe(t["mcp_name"]), safe(summary))
            console.print(grid)
        if row["excluded"]:
            console.print("  excluded: " + shown(", ".join(row["excluded"])), markup=False)


@mcp_app.command("serve")
def mcp_serve(
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve streamable HTTP on this port (default: stdio)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="HTTP address; beyond loopback only with a token configured.")
    ] = "127.0.0.1",
    worker: Annotated[
        int | None,
        typer.Option("--worker", min=1, help="Also run a worker with this many task slots."),
    ] = None,
) -> None:
    """Serve harness over MCP (stdio by default): submit_run, run_status, list_runs,
    show_run, cancel_run, ledger. Workers do the work (run one, or pass --worker N)."""
    import anyio

    from ..mcp import serve

    ws = workspace()
    anyio.run(lambda: serve(ws, port=port, host=host, worker=worker))


def register(app: typer.Typer) -> None:
    app.add_typer(mcp_app, name="mcp")
