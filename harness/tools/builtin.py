"""The built-in tools: files in the run's folder, web fetch, per-agent notes, and ``delegate``.

File tools are confined to ``ctx.workdir``: a path must be relative, may not contain ``..``,
and its real path (symbolic links resolved) must lie inside the real path of the folder.
``delegate`` is declared and validated here; the agent loop carries the call out (it enqueues
a child task); calling it through the registry returns an error result.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import Field, StringConstraints

from ..agents import DELEGATE
from ..errors import ConfigError, ToolError
from ..messages import FunctionSpec, ToolSpec
from ..scrub import storable
from .base import Tool, ToolContext, ToolRegistry, make_tool
from .webfetch import make_web_fetch_tool

__all__ = [
    "BUILTIN_TOOL_NAMES",
    "DELEGATE_TOOL",
    "GOAL_NOTE",
    "LIST_MAX_ENTRIES",
    "NOTE_APPEND",
    "NOTE_MAX_CHARS",
    "READ_ARTIFACT",
    "READ_MAX_BYTES",
    "WRITE_MAX_BYTES",
    "builtin_tools",
    "default_registry",
    "delegate_spec",
    "delegation",
    "resolve_in_workdir",
]

READ_MAX_BYTES = 1_000_000
WRITE_MAX_BYTES = 2_000_000
LIST_MAX_ENTRIES = 500
NOTE_MAX_CHARS = 8_000
NOTE_APPEND = "note_append"  # the agent's notes: what must outlive a compacted context


# ---------------------------------------------------------------------------------- files


def resolve_in_workdir(ctx: ToolContext, path: str) -> tuple[Path, Path]:
    """``(real workdir, real target)`` for a relative ``path``; ToolError if it would escape.

    Creates the workdir on first use. The target need not exist.
    """
    root = ctx.ensure_workdir()
    if not path.strip():
        raise ToolError("the path is empty; give a path relative to your working folder")
    if "\x00" in path:
        raise ToolError("the path contains a NUL character")
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or Path(path).is_absolute():
        raise ToolError(
            f"{path!r} is an absolute path; give a path relative to your working folder"
        )
    if ".." in pure.parts:
        raise ToolError(f"{path!r} leaves your working folder ('..' is not allowed)")
    target = Path(os.path.realpath(root / pure))
    if target != root and not target.is_relative_to(root):
        raise ToolError(f"{path!r} points outside your working folder (via a symbolic link)")
    return root, target


def _shown(root: Path, target: Path) -> str:
    return target.relative_to(root).as_posix() or "."


def read_file(path: str, ctx: ToolContext) -> str:
    """Read a text file from your working folder.

    Args:
        path: The file's path relative to your working folder, e.g. notes/draft.md.
    """
    _, target = resolve_in_workdir(ctx, path)
    if target.is_dir():
        raise ToolError(f"{path!r} is a folder; use list_files to see what it holds")
    if not target.is_file():
        raise ToolError(f"no such file: {path!r}")
    size = target.stat().st_size
    with target.open("rb") as handle:
        data = handle.read(READ_MAX_BYTES)
    if b"\x00" in data[:8192]:
        raise ToolError(f"{path!r} is a binary file ({size} bytes); only text files can be read")
    text = data.decode("utf-8", errors="replace")
    if size > len(data):
        text += f"\n[file truncated: showed the first {len(data)} of {size} bytes]"
    return text


def write_file(path: str, content: str, ctx: ToolContext) -> str:
    """Write a text file in your working folder, replacing it if it exists.

    Folders on the way are created.

    Args:
        path: The file's path relative to your working folder, e.g. reports/summary.md.
        content: The full text to write.
    """
    data = content.encode("utf-8")
    if len(data) > WRITE_MAX_BYTES:
        raise ToolError(f"content is {len(data)} bytes; the limit is {WRITE_MAX_BYTES} bytes")
    root, target = resolve_in_workdir(ctx, path)
    if target == root or target.is_dir():
        raise ToolError(f"{path!r} is a folder; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)  # readers never see a half-written file
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise ToolError(f"cannot write {path!r}: {exc.strerror or exc}") from exc
    return f"wrote {len(data)} bytes to {_shown(root, target)}"


def list_files(ctx: ToolContext, path: str = ".") -> str:
    """List the files under a folder of your working folder (recursively).

    Args:
        path: A folder relative to your working folder; "." is the folder itself.
    """
    root, target = resolve_in_workdir(ctx, path)
    if target.is_file():
        return f"{_shown(root, target)} ({target.stat().st_size} bytes)"
    if not target.is_dir():
        raise ToolError(f"no such folder: {path!r}")
    lines: list[str] = []
    total = 0
    for folder, dirs, files in os.walk(target):  # does not descend into symlinked folders
        dirs.sort()
        base = Path(folder)
        for name in dirs:
            total += 1
            if len(lines) < LIST_MAX_ENTRIES:
                lines.append(_shown(root, base / name) + "/")
        for name in sorted(files):
            total += 1
            if len(lines) < LIST_MAX_ENTRIES:
                entry = base / name
                size = f"{entry.stat().st_size} bytes" if entry.is_file() else "link"
                lines.append(f"{_shown(root, entry)} ({size})")
    if not lines:
        return f"{_shown(root, target)} is empty"
    lines.sort()
    if total > len(lines):
        lines.append(f"[... and {total - len(lines)} more entries]")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- notes


def _note_lines(ctx: ToolContext, rows: list[tuple[int, str, datetime]]) -> str:
    tz = ctx.settings.tz
    out = []
    for note_id, text, created in rows:
        when = created if created.tzinfo else created.replace(tzinfo=UTC)
        out.append(f"#{note_id} [{when.astimezone(tz):%Y-%m-%d %H:%M}] {text}")
    return "\n".join(out)


async def note_append(text: str, ctx: ToolContext) -> str:
    """Save a note to your long-term memory; it stays available in later tasks.

    Args:
        text: What to remember, self-contained (say what it is about).
    """
    text = storable(text.strip())
    if not text:
        raise ToolError("the note is empty")
    if len(text) > NOTE_MAX_CHARS:
        raise ToolError(f"the note has {len(text)} characters; the limit is {NOTE_MAX_CHARS}")
    note_id = await ctx.notes.append_note(ctx.agent, text)
    return f"saved note #{note_id}"


async def note_search(
    query: str, ctx: ToolContext, limit: Annotated[int, Field(ge=1, le=50)] = 10
) -> str:
    """Search your saved notes, most recent first.

    Args:
        query: Words to look for.
        limit: The most notes to return.
    """
    rows = await ctx.notes.search_notes(ctx.agent, query, limit)
    return _note_lines(ctx, rows) if rows else f"no notes match {query!r}"


async def note_read(ctx: ToolContext, limit: Annotated[int, Field(ge=1, le=100)] = 20) -> str:
    """Read your most recent saved notes, newest first.

    Args:
        limit: The most notes to return.
    """
    rows = await ctx.notes.read_notes(ctx.agent, limit)
    return _note_lines(ctx, rows) if rows else "you have no notes yet"


# ------------------------------------------------------------------------------ artifacts

READ_ARTIFACT = "read_artifact"  # offered to an agent once one of its results is an artifact


async def read_artifact(
    artifact_id: int,
    ctx: ToolContext,
    offset: Annotated[int, Field(ge=0)] = 0,
    length: Annotated[int, Field(ge=1, le=200_000)] = 4000,
) -> str:
    """Read a slice of a large result that was cut short (its whole text is kept).

    Args:
        artifact_id: The artifact named where the result was cut.
        offset: The first character to read.
        length: How many characters to read.
    """
    found = await ctx.artifacts.read_artifact(ctx.run_id, artifact_id) if ctx.artifacts else None
    if found is None:
        raise ToolError(f"no artifact {artifact_id} in this run")
    name, content = found
    piece = content[offset : offset + length]
    end = offset + len(piece)
    head = f"[artifact {artifact_id} ({name}): characters {offset:,}-{end:,} of {len(content):,}"
    if end < len(content):
        head += f"; read_artifact(artifact_id={artifact_id}, offset={end}) reads on"
    return f"{head}]\n{piece}"


# ------------------------------------------------------------------------------- delegate


def delegate(
    agent: str, task: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
) -> str:
    """Hand a task to a member of your team; their result comes back to you when done.

    Args:
        agent: Who should do the task.
        task: The task, self-contained: what to do, the context needed, what to hand back.
    """
    raise ToolError(f"{DELEGATE} is handled by the agent loop and cannot be run as a plain tool")


DELEGATE_TOOL = make_tool(delegate, name=DELEGATE)
"""The one ``delegate`` tool: its arguments are validated like any tool's; the loop carries
the call out (a child task). Agents are offered :func:`delegate_spec` for their team."""


GOAL_NOTE = "(For: {goal})"  # worded so that small models neither echo it nor ramble about a team


def delegation(
    arguments_json: str, targets: Collection[str], goal: str | None = None
) -> tuple[str, str]:
    """``(agent, child input)`` of a delegate call to one of ``targets``; ToolError with a
    message for the model when the arguments are not valid or name someone else.

    With ``goal`` (the delegating task's own input) the child's input is the task followed by
    that goal (``GOAL_NOTE``), unless the task already quotes it: a specialist always sees,
    in the goal's own words, what its work is for (a small model's task text drifts off the
    point, or echoes the schema's wording instead of a task)."""
    args = DELEGATE_TOOL.arguments(arguments_json)
    agent, task = args["agent"], storable(args["task"])  # the child's input is stored
    if agent not in targets:
        choices = ", ".join(sorted(targets)) or "nobody"
        raise ToolError(f"cannot delegate to {agent!r}; you may delegate to: {choices}")
    goal = storable(goal.strip()) if goal else ""
    if goal and goal not in task:
        task = f"{task}\n\n{GOAL_NOTE.format(goal=goal)}"
    return agent, task


def delegate_spec(agents: Sequence[str], descriptions: Mapping[str, str]) -> ToolSpec:
    """The ``delegate(agent, task)`` spec offered to an agent that may delegate to ``agents``.

    ``agent`` is an enum of exactly those names (precise schemas let grammar-constrained
    models call it validly); the description lists each one with its description.
    """
    names = list(dict.fromkeys(agents))
    if not names:
        raise ConfigError(f"{DELEGATE} needs at least one agent to delegate to")
    team = "\n".join(
        f"- {n}: {' '.join(descriptions.get(n, '').split()) or '(no description)'}" for n in names
    )
    parameters = json.loads(json.dumps(DELEGATE_TOOL.parameters))  # a copy to narrow
    parameters["properties"]["agent"] = {
        "type": "string",
        "enum": names,
        "description": "Who should do the task.",
    }
    description = f"{DELEGATE_TOOL.description}\nTeam:\n{team}"
    return ToolSpec(
        function=FunctionSpec(name=DELEGATE, description=description, parameters=parameters)
    )


# ------------------------------------------------------------------------------- together

_FUNCTIONS = (
    read_file,
    write_file,
    list_files,
    note_append,
    note_search,
    note_read,
    read_artifact,
)


def builtin_tools() -> list[Tool]:
    """The built-in tools: ``delegate``, the file and notes tools and ``web_fetch``."""
    return [DELEGATE_TOOL, *(make_tool(fn) for fn in _FUNCTIONS), make_web_fetch_tool()]


BUILTIN_TOOL_NAMES: frozenset[str] = frozenset(t.name for t in builtin_tools())


def default_registry() -> ToolRegistry:
    """A fresh registry holding the built-in tools."""
    return ToolRegistry(builtin_tools())
