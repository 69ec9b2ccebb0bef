"""Tools that exit (issue 13, item 4): argparse or click inside a tool call ``sys.exit``.

A tool's ``SystemExit`` or ``KeyboardInterrupt`` is that tool's error, read by the model;
the worker, and every other task on it, go on. A ``sys.exit()`` at a tool file's import is a
problem naming the file and line, exit 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.store import views
from harness.testing import ScriptedProvider
from tests.helpers import by_agent, runtime, set_front_matter, submit, work

TOOLS = '''
import argparse
import sys

import click

from harness import tool


@tool
def exits() -> str:
    """Calls sys.exit."""
    sys.exit(2)


@tool
async def exits_async() -> str:
    """Calls sys.exit from a coroutine."""
    sys.exit("bye")


@tool
def interrupted() -> str:
    """Raises KeyboardInterrupt."""
    raise KeyboardInterrupt


@tool
def uses_argparse(flags: str) -> str:
    """Parses flags with argparse (which exits on a bad one)."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int)
    return str(parser.parse_args(flags.split()))


@click.command()
@click.option("--n", type=int, required=True)
def _cli(n: int) -> None:
    print(n)


@tool
def uses_click(flags: str) -> str:
    """Runs a click command (which exits when it is done, or on a bad flag)."""
    _cli.main(flags.split())
    return "unreachable"
'''

CASES = {
    "exits": ({}, "SystemExit: 2"),
    "exits_async": ({}, "SystemExit: bye"),
    "interrupted": ({}, "KeyboardInterrupt"),
    "uses_argparse": ({"flags": "--bogus"}, "SystemExit: 2"),
    "uses_click": ({"flags": "--n 3"}, "SystemExit: 0"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_tool_that_exits_is_that_tools_error(workspace_dir: Path, name: str) -> None:
    (workspace_dir / "tools/exiting.py").write_text(TOOLS)
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", f"[{name}]")
    arguments, words = CASES[name]
    veblen = iter([ScriptedProvider.tool_call(name, arguments), ScriptedProvider.text("coped")])
    rt, _ = runtime(
        workspace_dir,
        by_agent(
            {"veblen": lambda r: next(veblen), "simmons": lambda r: ScriptedProvider.text("fine")}
        ),
    )
    exiting, _ = await submit(rt, "use the tool", "veblen")
    other, _ = await submit(rt, "something else", "simmons")  # on the same worker
    await work(rt, concurrency=2)
    first, second = [await rt.store.read(views.get_run, r) for r in (exiting, other)]
    assert first is not None and second is not None
    assert first["status"] == "done" and first["answer"] == "coped"
    assert second["status"] == "done" and second["answer"] == "fine"
    [task] = first["tasks"]
    [result] = [m for m in await rt.store.read(views.transcript, task["id"]) if m["role"] == "tool"]
    assert f"tool {name!r} crashed" in result["content"] and words in result["content"]
    await rt.aclose()


def test_sys_exit_at_a_tools_import_names_the_file_and_line(workspace_dir: Path) -> None:
    (workspace_dir / "tools/broken.py").write_text("import sys\n\nsys.exit(3)\n")
    res = CliRunner().invoke(app, ["-w", str(workspace_dir), "agents", "validate"])
    assert res.exit_code == 2
    assert f"{workspace_dir / 'tools/broken.py'}:3: could not import: SystemExit: 3" in res.stderr


def test_a_fifo_among_the_tools_is_refused_without_hanging(workspace_dir: Path) -> None:
    import os

    os.mkfifo(workspace_dir / "tools/pipe.py")  # importing it would block forever
    res = CliRunner().invoke(app, ["-w", str(workspace_dir), "agents", "validate", "--json"])
    assert res.exit_code == 2 and "pipe.py" in res.stdout and "not a regular file" in res.stdout
