"""Built-in tools: files confined to the run folder, notes, delegate."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.settings import Settings
from harness.tools import BUILTIN_TOOL_NAMES, ToolContext, ToolRegistry, default_registry
from harness.tools import builtin as builtin_tools

pytestmark = pytest.mark.anyio


class MemoryNotes:
    """An in-memory NotesStore."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str, datetime]] = []

    async def append_note(self, agent: str, text: str) -> int:
        note_id = len(self.rows) + 1
        self.rows.append((note_id, agent, text, datetime(2024, 3, 1, 12, note_id, tzinfo=UTC)))
        return note_id

    def _mine(self, agent: str) -> list[tuple[int, str, datetime]]:
        return [(i, text, at) for i, who, text, at in reversed(self.rows) if who == agent]

    async def search_notes(
        self, agent: str, query: str, limit: int = 10
    ) -> list[tuple[int, str, datetime]]:
        words = query.lower().split()
        return [r for r in self._mine(agent) if all(w in r[1].lower() for w in words)][:limit]

    async def read_notes(self, agent: str, limit: int = 20) -> list[tuple[int, str, datetime]]:
        return self._mine(agent)[:limit]


@pytest.fixture
def notes() -> MemoryNotes:
    return MemoryNotes()


@pytest.fixture
def ctx(tmp_path: Path, notes: MemoryNotes) -> ToolContext:
    return ToolContext(
        run_id=7,
        task_id=1,
        agent="bradlee",
        workdir=tmp_path / "var" / "runs" / "7",
        settings=Settings(timezone="Europe/Paris"),
        notes=notes,
    )


@pytest.fixture
def reg() -> ToolRegistry:
    return default_registry()


async def call(reg: ToolRegistry, ctx: ToolContext, name: str, args: str) -> tuple[bool, str]:
    result = await reg.call(name, args, ctx, allowed=BUILTIN_TOOL_NAMES, max_chars=100_000)
    return result.ok, result.content


# ------------------------------------------------------------------------------------ files


async def test_write_read_list_roundtrip(reg: ToolRegistry, ctx: ToolContext) -> None:
    assert not ctx.workdir.exists()
    ok, out = await call(
        reg, ctx, "write_file", '{"path": "reports/q1/summary.md", "content": "héllo\\n"}'
    )
    assert ok and out == "wrote 7 bytes to reports/q1/summary.md"
    assert (ctx.workdir / "reports/q1/summary.md").read_text(encoding="utf-8") == "héllo\n"
    assert await call(reg, ctx, "read_file", '{"path": "reports/q1/summary.md"}') == (
        True,
        "héllo\n",
    )
    ok, out = await call(
        reg, ctx, "write_file", '{"path": "reports/q1/summary.md", "content": "x"}'
    )
    assert ok and (ctx.workdir / "reports/q1/summary.md").read_text() == "x"
    (ctx.workdir / "top.txt").write_text("abc")
    ok, out = await call(reg, ctx, "list_files", "{}")
    assert ok
    assert out.splitlines() == [
        "reports/",
        "reports/q1/",
        "reports/q1/summary.md (1 bytes)",
        "top.txt (3 bytes)",
    ]
    assert await call(reg, ctx, "list_files", '{"path": "reports/q1"}') == (
        True,
        "reports/q1/summary.md (1 bytes)",
    )
    assert not [p for p in ctx.workdir.rglob("*.tmp")]  # no temp files left behind


async def test_list_empty_and_capped(
    reg: ToolRegistry, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await call(reg, ctx, "list_files", '{"path": "."}') == (True, ". is empty")
    for i in range(5):
        (ctx.workdir / f"f{i}.txt").write_text("")
    monkeypatch.setattr(builtin_tools, "LIST_MAX_ENTRIES", 3)
    ok, out = await call(reg, ctx, "list_files", "{}")
    assert ok and out.splitlines()[-1] == "[... and 2 more entries]"
    assert len(out.splitlines()) == 4


async def test_file_errors(
    reg: ToolRegistry, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ctx.ensure_workdir()
    (root / "dir").mkdir()
    (root / "blob.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    (root / "plain").write_text("x")
    cases = [
        ("read_file", '{"path": "missing.txt"}', "no such file: 'missing.txt'"),
        ("read_file", '{"path": "dir"}', "is a folder"),
        ("read_file", '{"path": "blob.bin"}', "binary file"),
        ("read_file", '{"path": "  "}', "path is empty"),
        ("read_file", "{}", "path: missing required argument"),
        ("write_file", '{"path": "dir", "content": "x"}', "is a folder"),
        ("write_file", '{"path": "plain/child.txt", "content": "x"}', "cannot write"),
        ("list_files", '{"path": "nowhere"}', "no such folder"),
    ]
    for name, args, expected in cases:
        ok, out = await call(reg, ctx, name, args)
        assert not ok and expected in out, (name, args, out)


async def test_size_caps(
    reg: ToolRegistry, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ctx.ensure_workdir()
    (root / "big.txt").write_text("0123456789" * 10)
    monkeypatch.setattr(builtin_tools, "READ_MAX_BYTES", 25)
    ok, out = await call(reg, ctx, "read_file", '{"path": "big.txt"}')
    assert ok
    assert out == "0123456789012345678901234\n[file truncated: showed the first 25 of 100 bytes]"
    monkeypatch.setattr(builtin_tools, "WRITE_MAX_BYTES", 10)
    ok, out = await call(reg, ctx, "write_file", '{"path": "w.txt", "content": "12345678901"}')
    assert not ok and "limit is 10 bytes" in out
    assert not (root / "w.txt").exists()


# --------------------------------------------------------------------------- confinement


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("TOP SECRET")
    return folder


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "..", "/etc/passwd", "sub/../../../etc/passwd", "..\\x"]
)
async def test_escapes_are_refused(reg: ToolRegistry, ctx: ToolContext, path: str) -> None:
    for name, args in [
        ("read_file", {"path": path}),
        ("write_file", {"path": path, "content": "pwned"}),
        ("list_files", {"path": path}),
    ]:
        ok, out = await call(reg, ctx, name, json.dumps(args))
        assert not ok, (name, path, out)
        assert "absolute path" in out or "leaves your working folder" in out


async def test_symlinked_file_outside_is_refused(
    reg: ToolRegistry, ctx: ToolContext, outside: Path
) -> None:
    root = ctx.ensure_workdir()
    (root / "link.txt").symlink_to(outside / "secret.txt")
    ok, out = await call(reg, ctx, "read_file", '{"path": "link.txt"}')
    assert not ok and "outside your working folder" in out and "SECRET" not in out
    ok, out = await call(reg, ctx, "write_file", '{"path": "link.txt", "content": "pwned"}')
    assert not ok
    assert (outside / "secret.txt").read_text() == "TOP SECRET"


async def test_symlinked_dir_outside_is_refused(
    reg: ToolRegistry, ctx: ToolContext, outside: Path
) -> None:
    root = ctx.ensure_workdir()
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    for name, args in [
        ("read_file", '{"path": "linkdir/secret.txt"}'),
        ("write_file", '{"path": "linkdir/new.txt", "content": "pwned"}'),
        ("write_file", '{"path": "linkdir/deeper/new.txt", "content": "pwned"}'),
        ("list_files", '{"path": "linkdir"}'),
    ]:
        ok, out = await call(reg, ctx, name, args)
        assert not ok and "outside your working folder" in out, (name, out)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    ok, out = await call(reg, ctx, "list_files", "{}")  # the link is listed, not followed
    assert ok and "secret" not in out


async def test_links_inside_and_a_symlinked_runs_folder_are_fine(
    reg: ToolRegistry, ctx: ToolContext, tmp_path: Path
) -> None:
    real = tmp_path / "real_runs"
    real.mkdir()
    ctx.workdir.parent.parent.mkdir(parents=True)
    ctx.workdir.parent.symlink_to(real, target_is_directory=True)  # var/runs on another disk
    (real / "7").mkdir()
    (real / "7" / "a.txt").write_text("inside")
    (real / "7" / "alias.txt").symlink_to(real / "7" / "a.txt")
    assert await call(reg, ctx, "read_file", '{"path": "alias.txt"}') == (True, "inside")
    assert await call(reg, ctx, "read_file", '{"path": "./a.txt"}') == (True, "inside")


@pytest.mark.parametrize("plant", ["symlink", "dangling", "file"])
async def test_a_planted_run_folder_is_refused(
    reg: ToolRegistry, ctx: ToolContext, tmp_path: Path, plant: str
) -> None:
    """Run ids are sequential: whoever plants ``var/runs/<next id>`` as a link must not
    redirect that run's file tools (nothing is read or written through it)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    ctx.workdir.parent.mkdir(parents=True)
    if plant == "symlink":
        ctx.workdir.symlink_to(outside, target_is_directory=True)
    elif plant == "dangling":
        ctx.workdir.symlink_to(tmp_path / "not-yet", target_is_directory=True)
    else:
        ctx.workdir.write_text("not a folder")
    for name, args in [
        ("read_file", '{"path": "secret.txt"}'),
        ("write_file", '{"path": "new.txt", "content": "pwned"}'),
        ("list_files", "{}"),
    ]:
        ok, out = await call(reg, ctx, name, args)
        assert not ok and "run folder" in out and "refusing" in out, (name, out)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert not (tmp_path / "not-yet").exists()


# ---------------------------------------------------------------------------------- notes


async def test_notes(reg: ToolRegistry, ctx: ToolContext, notes: MemoryNotes) -> None:
    assert await call(reg, ctx, "note_read", "{}") == (True, "you have no notes yet")
    assert await call(reg, ctx, "note_append", '{"text": "  Rates rose in March  "}') == (
        True,
        "saved note #1",
    )
    await notes.append_note("someone_else", "rates are private to me")
    await call(reg, ctx, "note_append", '{"text": "Bond yields fell"}')
    ok, out = await call(reg, ctx, "note_read", "{}")
    assert ok
    assert out.splitlines() == [
        "#3 [2024-03-01 13:03] Bond yields fell",  # shown in the workspace's zone (Paris)
        "#1 [2024-03-01 13:01] Rates rose in March",
    ]
    ok, out = await call(reg, ctx, "note_search", '{"query": "rates"}')
    assert ok and out == "#1 [2024-03-01 13:01] Rates rose in March"
    assert await call(reg, ctx, "note_search", '{"query": "gold"}') == (
        True,
        "no notes match 'gold'",
    )
    ok, out = await call(reg, ctx, "note_read", '{"limit": 1}')
    assert ok and out.startswith("#3 ") and "\n" not in out


async def test_note_errors(
    reg: ToolRegistry, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, out = await call(reg, ctx, "note_append", '{"text": "   "}')
    assert not ok and "empty" in out
    monkeypatch.setattr(builtin_tools, "NOTE_MAX_CHARS", 5)
    ok, out = await call(reg, ctx, "note_append", '{"text": "too long"}')
    assert not ok and "limit is 5" in out
    ok, out = await call(reg, ctx, "note_read", '{"limit": 0}')
    assert not ok and "limit:" in out


def test_notes_limit_schema() -> None:
    props = default_registry().specs(["note_read"])[0].function.parameters["properties"]
    assert props["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 20,
        "description": "The most notes to return.",
    }


async def test_naive_note_times_are_taken_as_utc(ctx: ToolContext) -> None:
    text = builtin_tools._note_lines(ctx, [(5, "x", datetime(2024, 7, 1, 10, 0))])
    assert text == "#5 [2024-07-01 12:00] x"
