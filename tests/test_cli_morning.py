"""The morning at the terminal (issue 19): a real workspace and database, the CLI as a user
meets it: outside a workspace, time arguments, exclusive options, unknown agents, totals."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.settings import MAX_CONCURRENCY
from tests.helpers import by_agent, runtime, submit, work

runner = CliRunner()


def cli(ws: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--workspace", str(ws), *args])
    return res.exit_code, res.stdout, res.stderr


COMMANDS = [
    ["status"],
    ["status", "1"],
    ["show", "1"],
    ["ledger"],
    ["ledger", "--forecast"],
    ["agents", "list"],
    ["agents", "validate"],
    ["submit", "a goal"],
    ["report"],
    ["schedules", "list"],
    ["db", "upgrade"],
    ["cancel", "1"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_outside_a_workspace_every_command_fails_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli(empty, *command)
    assert code == 2, (out, err)
    assert "not a harness workspace: run `harness init DIR` or pass --workspace" in err
    assert list(empty.iterdir()) == []


def test_init_writes_a_gitignore_for_var(tmp_path: Path) -> None:
    res = runner.invoke(app, ["init", str(tmp_path / "ws")])
    assert res.exit_code == 0
    assert (tmp_path / "ws/.gitignore").read_text() == "var/\n"
    # an existing one gets the line added, once
    (tmp_path / "other").mkdir()
    (tmp_path / "other/.gitignore").write_text("*.log\n")
    assert runner.invoke(app, ["init", "--force", str(tmp_path / "other")]).exit_code == 0
    assert runner.invoke(app, ["init", "--force", str(tmp_path / "other")]).exit_code == 0
    assert (tmp_path / "other/.gitignore").read_text() == "*.log\nvar/\n"


def _two_runs(ws: Path) -> None:
    rt, _ = runtime(ws, by_agent({"veblen": lambda r: "books", "simmons": lambda r: "stocks"}))

    async def go() -> None:
        await submit(rt, "read", "veblen")
        await submit(rt, "invest", "simmons")
        await submit(rt, "read more", "veblen")
        await work(rt)
        await rt.aclose()

    anyio.run(go)


GOOD_TIMES = ["12h", "7d", "30m", "2w", "today", "yesterday", "2024-06-01", "2024-06-01T08:00"]


@pytest.mark.parametrize("when", GOOD_TIMES)
def test_one_time_parser_for_every_command(workspace_dir: Path, when: str) -> None:
    for args in (
        ["ledger", "--since", when],
        ["ledger", "--day", when],
        ["ledger", "--since", "2024-01-01", "--until", when],
        ["report", "--since", when],
        ["report", "--since", "2024-01-01", "--until", when],
    ):
        code, _, err = cli(workspace_dir, *args)
        assert code == 0, (args, err)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ledger", "--since", "last tuesday"], "not a time: 'last tuesday'"),
        (["ledger", "--since", "today", "--until", "yesterday"], "after --until"),
        (["ledger", "--day", "today", "--since", "7d"], "not both"),
        (["ledger", "--since", "2999-01-01"], "in the future"),
        (["report", "--since", "today", "--until", "yesterday"], "after --until"),
        (["report", "--since", "soon"], "not a time: 'soon'"),
        (["ledger", "--json", "--csv"], "--json and --csv"),
        (["show", "1", "--json", "--full"], "--full and --json"),
        (["ledger", "--agent", "nobody"], "unknown agent 'nobody' (known: arnold, bradlee"),
        (["worker", "-c", str(MAX_CONCURRENCY + 1)], "-c"),
        (["status", "--limit", "0"], "--limit"),
        (["show", "99999999999999999999"], "run_id"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_mistakes_in_arguments_exit_2_naming_them(
    workspace_dir: Path, args: list[str], words: str
) -> None:
    code, _, err = cli(workspace_dir, *args)
    assert code == 2 and words in err, err


def test_ledger_days_and_ranges_select_the_right_rows(workspace_dir: Path) -> None:
    _two_runs(workspace_dir)
    for args, n in (
        (["--day", "today"], 2),
        (["--since", "1d"], 2),
        (["--day", "yesterday"], 0),
        (["--since", "2000-01-01", "--until", "yesterday"], 0),
        (["--agent", "veblen"], 1),
    ):
        code, out, err = cli(workspace_dir, "ledger", *args, "--json")
        assert code == 0 and len(json.loads(out)) == n, (args, out, err)


def test_the_ledger_table_has_a_totals_row(workspace_dir: Path) -> None:
    _two_runs(workspace_dir)
    _, out, _ = cli(workspace_dir, "ledger", "--json")
    rows = json.loads(out)
    assert len(rows) == 2 and '"total ' not in out  # JSON is the data only
    code, out, _ = cli(workspace_dir, "ledger")
    assert code == 0
    [total] = [line for line in out.splitlines() if "total" in line]
    calls = sum(r["calls"] for r in rows)
    prompt = sum(r["prompt_tokens"] for r in rows)
    assert "2 agents" in total and f" {calls} " in total and f"{prompt:,}" in total


def test_times_are_shown_with_how_long_ago(workspace_dir: Path) -> None:
    _two_runs(workspace_dir)
    code, out, _ = cli(workspace_dir, "status")
    assert code == 0 and "s ago)" in out and "UTC" in out
    code, out, _ = cli(workspace_dir, "show", "1")
    assert code == 0 and "created " in out and "s ago)" in out


def test_status_shows_at_most_limit_running_tasks_and_says_how_many_more(
    workspace_dir: Path,
) -> None:
    from harness.store import queue, workers

    rt, _ = runtime(workspace_dir, by_agent({}))

    async def go() -> None:
        for i in range(5):
            await submit(rt, f"goal {i}", "veblen")
        wid = await rt.store.write(workers.register_worker, 5)
        assert len(await rt.store.write(queue.claim, wid, 600, 5)) == 5
        await rt.aclose()

    anyio.run(go)
    code, out, _ = cli(workspace_dir, "status", "--limit", "2")
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("│") and "veblen" in line]
    assert len(rows) == 2 + 2  # two runs, then two of the running tasks
    assert "3 more running: --limit 5 shows all" in out
    code, out, _ = cli(workspace_dir, "status", "--limit", "5")
    assert code == 0 and "more running" not in out
