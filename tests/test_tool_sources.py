"""The registry's seam for tools known only at run time (``ToolSource``), with a plain
in-memory source: claims, ``<group>__*`` patterns, ``prepare`` and the loop's use of it."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from harness.errors import ToolsUnavailable
from harness.runtime import Runtime, load_agents, load_tools
from harness.settings import load_workspace
from harness.store import Store, views
from harness.testing import ScriptedProvider
from harness.tools import Tool, ToolContext, ToolRegistry, default_registry, make_tool
from tests.helpers import set_front_matter, submit, work

pytestmark = pytest.mark.anyio


def shout(text: str) -> str:
    """Shout."""
    return text.upper()


def whisper(text: str) -> str:
    """Whisper."""
    return text.lower()


class Source:
    """Tools ``grp__shout`` and ``grp__whisper``, handed out on ``prepare``."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.asked: list[list[str]] = []
        self.closed = False

    def claims(self, name: str) -> bool:
        return name.startswith("grp__")

    async def tools(self, names: Collection[str]) -> list[Tool]:
        self.asked.append(sorted(names))
        if self.down:
            raise ToolsUnavailable("grp is down", source="grp")
        return [make_tool(shout, name="grp__shout"), make_tool(whisper, name="grp__whisper")]

    async def aclose(self) -> None:
        self.closed = True


async def test_claimed_names_are_accepted_and_prepared_on_demand(tmp_path: Path) -> None:
    registry = default_registry()
    source = Source()
    registry.add_source(source)
    assert "grp__shout" in registry and "grp__*" in registry and "other__x" not in registry
    assert registry.get("grp__shout") is None and source.asked == []  # nothing fetched yet
    await registry.prepare(["note_append", "grp__*"])
    assert source.asked == [["grp__*"]]
    specs = registry.specs(["grp__*", "note_append", "grp__shout"])
    assert [s.function.name for s in specs] == ["grp__shout", "grp__whisper", "note_append"]
    ctx = ToolContext(1, 1, "a", tmp_path, None, None)  # type: ignore[arg-type]
    ok = await registry.call(
        "grp__whisper", '{"text": "HI"}', ctx, allowed={"grp__*"}, max_chars=99
    )
    assert ok.ok and ok.content == "hi"
    refused = await registry.call(
        "grp__shout", '{"text": "x"}', ctx, allowed={"note_read"}, max_chars=99
    )
    assert not refused.ok and refused.content.startswith("tool 'grp__shout' is not available")
    await registry.aclose()
    assert source.closed


async def test_a_source_that_cannot_serve_raises_and_a_plain_registry_needs_none() -> None:
    registry = ToolRegistry()
    await registry.prepare(["anything"])  # no sources: nothing to do
    registry.add_source(Source(down=True))
    with pytest.raises(ToolsUnavailable, match="grp is down"):
        await registry.prepare(["grp__shout"])


async def test_the_loop_prepares_an_agents_tools_before_its_first_step(
    workspace_dir: Path,
) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[grp__*]")
    source = Source()
    ws = load_workspace(workspace_dir)
    tools = load_tools(ws)
    tools.add_source(source)  # before the agents load: they name its tools
    provider = ScriptedProvider([ScriptedProvider.tool_call("grp__shout", {"text": "hey"}), "done"])
    store = Store.open(ws.database_url())
    rt = Runtime(ws, load_agents(ws, tools), tools, provider, store)
    try:
        run_id, _ = await submit(rt, "g", "veblen")
        await work(rt)
        run = await rt.store.read(views.get_run, run_id)
    finally:
        await rt.aclose()
    assert run is not None and run["status"] == "done"
    assert [t.function.name for t in provider.requests[0].tools or []] == [
        "grp__shout",
        "grp__whisper",
    ]
    assert provider.requests[1].messages[-1].content == "HEY"
    assert source.closed
