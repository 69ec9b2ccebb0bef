"""What a model or a tool wrote, shown and stored (issue 13, items 3 and 5; issue 19, item 1).

Rich markup, ANSI/OSC escapes, carriage returns and bidi overrides are printed as visible
text by ``show``, ``run``-style output and ``report``, never acted on; secrets a tool or a
server echoes are redacted before they are stored, printed or sent back; long text wraps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from sqlalchemy import select, update
from typer.testing import CliRunner

from harness import scrub
from harness.cli import app
from harness.provider import OpenAIProvider
from harness.scrub import printable
from harness.store.schema import messages, tasks
from harness.testing import ScriptedProvider
from tests.helpers import runtime, set_front_matter, submit, work

runner = CliRunner()
KEY = "sk-evil-0123456789abcdef"
HOSTILE = {
    "clear screen": "\x1b[2J\x1b[H",
    "set the title": "\x1b]0;pwned\x07",
    "OSC 8 link": "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "carriage return": "all good\rFAKE",
    "bidi override": "abc\u202edcba",
    "C1 control": "\x9b31m",
    "bell": "\x07",
}
MARKUP = "[red]fake[/red] [/] [link=https://evil.example]x[/link]"
LONG = " ".join(f"word{i:03d}" for i in range(400))


def cli(ws: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--workspace", str(ws), *args], env={"COLUMNS": "60"})
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("EVIL_API_KEY", KEY)  # a secret-looking variable: known once settings load
    yield KEY
    scrub.forget_secret(KEY)


TOOLS = '''
import os
from harness import tool

@tool
def leak() -> str:
    """Return the key."""
    return "the key is " + os.environ["EVIL_API_KEY"]

@tool
def boom() -> str:
    """Fail with the key."""
    raise RuntimeError("auth failed for " + os.environ["EVIL_API_KEY"])
'''


def _hostile_run(ws: Path) -> tuple[int, int]:
    """A run whose transcript holds every hostile thing: tool calls with markup and escapes
    in names, ids and arguments, tool results with the key, an answer with all of it."""
    (ws / "tools/evil.py").write_text(TOOLS)
    set_front_matter(ws / "agents/veblen.md", "tools", "[leak, boom]")
    answer = "\n".join(f"{name}: {text}" for name, text in HOSTILE.items()) + f"\n{MARKUP}\n{LONG}"
    script = [
        ScriptedProvider.tool_calls(
            ("leak", {}, "id[/]\x1b[2J"),
            ("boom", {}, "id2"),
            ("evil[/]name\x1b]0;t\x07", {"x": "\x1b[31m[bold]"}, "id3"),
        ),
        ScriptedProvider.text(answer),
    ]
    rt, _ = runtime(ws, script)

    async def go() -> tuple[int, int]:
        run_id, task_id = await submit(rt, "Goal with \x1b[2J and [red]markup[/red]", "veblen")
        await work(rt, concurrency=1)
        await rt.aclose()
        return run_id, task_id

    return anyio.run(go)


def test_tool_results_and_errors_are_stored_without_the_secret(
    workspace_dir: Path, secret: str
) -> None:
    _hostile_run(workspace_dir)
    rt, _ = runtime(workspace_dir, [])
    rows = rt.store.read_sync(lambda c: c.execute(select(messages.c.content)).scalars().all())
    rt.store.close()
    stored = "\n".join(r or "" for r in rows)
    assert secret not in stored
    assert "the key is [redacted]" in stored and "auth failed for [redacted]" in stored


@pytest.mark.parametrize("command", ["show", "show --task", "show --full", "report", "status"])
def test_nothing_hostile_reaches_the_terminal(
    workspace_dir: Path, secret: str, command: str
) -> None:
    run_id, task_id = _hostile_run(workspace_dir)
    args = {
        "show": ["show", str(run_id)],
        "show --task": ["show", str(run_id), "--task", str(task_id)],
        "show --full": ["show", str(run_id), "--full"],
        "report": ["report", "--since", "1h"],
        "status": ["status"],
    }[command]
    code, out, err = cli(workspace_dir, *args)
    assert code == 0, err
    for char in ("\x1b", "\x07", "\x9b", "\r", "\u202e"):
        assert char not in out, (command, repr(char))
    assert secret not in out
    if command != "status":
        assert "\\x1b[2J" in out  # shown, as text
    if command.startswith("show --task"):
        assert "evil[/]name" in out and "id[/]" in out  # markup shown as written
    if command == "show":
        assert "[red]fake[/red]" in out


def test_show_wraps_and_never_crops(workspace_dir: Path) -> None:
    run_id, _ = _hostile_run(workspace_dir)
    for args in (["show", str(run_id)], ["show", str(run_id), "--full"]):
        code, out, _ = cli(workspace_dir, *args)
        assert code == 0
        missing = [w for w in LONG.split() if w not in out]
        assert missing == [], (args, missing[:5])
        assert all(len(line) <= 60 for line in out.splitlines()) or "--full" in args
    code, out, _ = cli(workspace_dir, "status")  # a narrow column: the goal wraps, whole
    assert all(word in out for word in ("Goal", "with", "done", "veblen"))


def test_json_output_is_redacted_even_for_old_rows(workspace_dir: Path, secret: str) -> None:
    run_id, task_id = _hostile_run(workspace_dir)
    rt, _ = runtime(workspace_dir, [])
    rt.store.write_sync(  # a row written before redaction existed
        lambda c: c.execute(update(tasks).values(error=f"old error with {secret}"))
    )
    rt.store.close()
    for args in (["status", "--json"], ["show", str(run_id), "--json"], ["status", str(run_id)]):
        code, out, _ = cli(workspace_dir, *args)
        assert code == 0 and secret not in out, args
    code, out, _ = cli(workspace_dir, "show", str(run_id), "--task", str(task_id), "--json")
    data = json.loads(out)
    assert secret not in out and any("[redacted]" in (m["content"] or "") for m in data)


def test_a_header_echoed_in_an_error_body_is_redacted_everywhere(workspace_dir: Path) -> None:
    """Not only headers named like secrets: every configured header value (X-Org here)."""
    org = "org-9f8e7d6c5b4a"
    cfg = workspace_dir / "config/harness.toml"
    cfg.write_text(
        cfg.read_text().replace(
            "[providers.local]\n",
            f'[providers.local]\nheaders = {{ X-Org = "{org}", Cookie = "sid=abcdefgh1234" }}\n'
            "max_retries = 0\n",
        )
    )
    cfg.write_text(cfg.read_text().replace("max_attempts = 3", "max_attempts = 1"))
    rt, _ = runtime(workspace_dir, [])
    router = respx.Router(assert_all_called=False)
    echo = f"unauthorized: org {org} with cookie sid=abcdefgh1234"
    router.post(url__regex=r".*/chat/completions").mock(return_value=httpx.Response(401, text=echo))
    rt.provider = OpenAIProvider(
        rt.settings, transport_factory=lambda n, c: httpx.MockTransport(router.async_handler)
    )

    async def go() -> int:
        run_id, _ = await submit(rt, "anything", "veblen")
        await work(rt, concurrency=1)
        await rt.aclose()
        return run_id

    run_id = anyio.run(go)
    for args in (["status", "--json"], ["show", str(run_id), "--json"], ["report"]):
        code, out, _ = cli(workspace_dir, *args)
        assert code == 0 and org not in out and "abcdefgh1234" not in out, (args, out)
    assert "401" in cli(workspace_dir, "show", str(run_id))[1]
    rt, _ = runtime(workspace_dir, [])
    errors = rt.store.read_sync(lambda c: c.execute(select(tasks.c.error)).scalars().all())
    rt.store.close()
    assert errors and all(org not in (e or "") for e in errors)
    scrub.forget_secret(org)
    scrub.forget_secret("sid=abcdefgh1234")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_printable_makes_every_control_visible(name: str) -> None:
    shown = printable(f"before {HOSTILE[name]} after\nnext\tline")
    assert shown.isprintable() or set(shown) - set(shown.replace("\n", "").replace("\t", "")) <= {
        "\n",
        "\t",
    }
    assert "\nnext\tline" in shown and shown.startswith("before ")
