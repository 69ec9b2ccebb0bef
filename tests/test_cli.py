"""The CLI's commands, exit codes and documented JSON shapes (no model involved)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()


def cli(ws: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--workspace", str(ws), *args])
    return res.exit_code, res.stdout, res.stderr


def test_init_writes_a_complete_workspace(tmp_path: Path) -> None:
    target = tmp_path / "new"
    res = runner.invoke(app, ["init", str(target)])
    assert res.exit_code == 0, res.output
    for rel in ("config/harness.toml", "agents/arnold.md", "agents/veblen.md", "tools/example.py"):
        assert (target / rel).is_file(), rel
    code, out, _ = cli(target, "agents", "validate", "--json")
    assert code == 0 and json.loads(out)["agents"] == [
        "arnold",
        "bradlee",
        "gulbenkian",
        "simmons",
        "veblen",
    ]
    res = runner.invoke(app, ["init", str(target)])
    assert res.exit_code == 2 and "not empty" in res.output


def test_agents_list_and_show(workspace_dir: Path) -> None:
    code, out, _ = cli(workspace_dir, "agents", "list", "--json")
    agents = json.loads(out)
    assert code == 0 and agents[0]["name"] == "arnold"
    assert {"name", "description", "model", "tools", "delegates_to", "daily_token_budget"} <= set(
        agents[0]
    )
    code, out, _ = cli(workspace_dir, "agents", "show", "veblen")
    assert code == 0 and "You are R. Veblen" in out
    code, _, err = cli(workspace_dir, "agents", "show", "nobody")
    assert code == 2 and "unknown agent 'nobody'" in err


def test_agents_validate_prints_all_problems_and_exits_2(workspace_dir: Path) -> None:
    (workspace_dir / "agents/veblen.md").write_text(
        "---\nname: veblen\ndescription: d\nmodel: nope\n---\nx\n"
    )
    (workspace_dir / "agents/extra.md").write_text("---\nname: extra\n---\nx\n")
    code, out, _ = cli(workspace_dir, "agents", "validate", "--json")
    data = json.loads(out)
    assert code == 2 and data["ok"] is False
    fields = {(Path(p["file"]).name, p["field"]) for p in data["problems"]}
    assert ("veblen.md", "model") in fields and ("extra.md", "description") in fields
    # the console script prints every problem on stderr with exit code 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "--workspace",
            str(workspace_dir),
            "agents",
            "validate",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        "veblen.md" in proc.stderr
        and "extra.md" in proc.stderr
        and "unknown model 'nope'" in proc.stderr
    )


def test_submit_status_show_cancel(workspace_dir: Path) -> None:
    code, out, _ = cli(workspace_dir, "submit", "Brief me on HBM supply", "--json")
    assert code == 0
    [run_id] = json.loads(out)
    code, out, _ = cli(workspace_dir, "submit", "Portfolio view", "--agent", "simmons")
    assert code == 0 and out.strip() == str(run_id + 1)
    code, out, _ = cli(workspace_dir, "status", "--json")
    runs = json.loads(out)
    assert [r["id"] for r in runs] == [run_id + 1, run_id]
    first = runs[1]
    for key in ("id", "goal", "agent", "status", "created_at", "updated_at", "usage"):
        assert key in first, key
    assert first["status"] == "queued" and first["agent"] == "arnold"
    assert {"prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"} <= set(first["usage"])
    code, out, _ = cli(workspace_dir, "status", str(run_id), "--json")
    one = json.loads(out)
    assert one["tasks"][0]["agent"] == "arnold" and one["tasks"][0]["children"] == []
    code, out, _ = cli(workspace_dir, "cancel", str(run_id))
    assert code == 0 and "cancelled 1 task" in out
    code, out, _ = cli(workspace_dir, "show", str(run_id))
    assert code == 0 and "cancelled" in out
    code, _, err = cli(workspace_dir, "show", "999")
    assert code == 2 and "no run 999" in err
    code, _, err = cli(workspace_dir, "submit", "x", "--agent", "nobody")
    assert code == 2 and "unknown agent" in err


def test_db_upgrade_is_idempotent(workspace_dir: Path) -> None:
    code, out, _ = cli(workspace_dir, "db", "upgrade")
    assert code == 0 and "(upgraded)" in out
    code, out, _ = cli(workspace_dir, "db", "upgrade")
    assert code == 0 and "already current" in out


def test_bad_config_exits_2_naming_the_key(workspace_dir: Path) -> None:
    cfg = workspace_dir / "config/harness.toml"
    cfg.write_text(cfg.read_text().replace("concurrency = 4", "concurrency = -1"))
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "--workspace", str(workspace_dir), "status"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "worker.concurrency" in proc.stderr
