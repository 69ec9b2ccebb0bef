"""``harness models``: each configured model, its endpoint, window and prices, and where each
figure came from (the server, the config, the model catalogue)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import JsonOpt, out, print_json, workspace

if TYPE_CHECKING:
    from ..provider.probe import Probe
    from ..settings import Settings


def models(
    as_json: JsonOpt = False,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Ask each server (GET /models).")
    ] = True,
) -> None:
    """List the configured models: endpoint, context window and prices (USD per million
    tokens), each with its source; with --probe (the default) each server is asked too."""
    import anyio

    from ..provider import catalogue
    from ..provider.probe import probe_models, reported_windows

    settings = workspace().settings
    probes = anyio.run(probe_models, settings, set(settings.models)) if probe else {}
    _, facts = catalogue.resolve(settings, reported_windows(settings, probes))
    rows = [_row(settings, f, probes, probe) for f in facts.values()]
    rows.sort(key=lambda r: (r["name"] != settings.default_model, r["name"]))
    if as_json:
        print_json(rows)
        return
    _table(rows)


def _row(settings: Settings, facts: Any, probes: dict[str, Probe], probed: bool) -> dict[str, Any]:
    found = probes.get(facts.provider)
    if settings.providers[facts.provider].local:
        status = "embedded (started on demand)"
    elif found is None:
        status = "not probed" if not probed else "-"
    else:
        status = found.problem or "ok"
    return {
        "name": facts.name,
        "default": facts.name == settings.default_model,
        "provider": facts.provider,
        "endpoint": facts.endpoint,
        "id": facts.wire_id,
        "tools": facts.tools,
        "max_tokens": facts.max_tokens,
        "context_window": facts.window,
        "context_window_source": facts.window_source,
        "price_input": facts.price_input,
        "price_cached_input": facts.price_cached_input,
        "price_output": facts.price_output,
        "price_source": facts.price_source,
        "status": status,
    }


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("model", "endpoint", "window", "prices in / cached / out", "status")
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        prices = f"${r['price_input']:g} / ${r['price_cached_input']:g} / ${r['price_output']:g}"
        table.add_row(
            f"{name}\n{r['id']} · {r['tools']} tools · max {r['max_tokens']:,}",
            r["endpoint"],
            f"{r['context_window']:,}\n{r['context_window_source']}",
            f"{prices}\n{r['price_source']}",
            r["status"],
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(models)
