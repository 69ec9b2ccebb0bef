"""``harness schedules list``, ``harness report`` and ``harness submit --from`` (CliRunner)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import cli
from harness.cli import app
from harness.clock import parse_period, parse_time

runner = CliRunner()

SCHEDULES = """
[[schedules]]
name = "morning"
cron = "0 6 * * *"
timezone = "Europe/London"
goal = "Write the morning briefing."

[[schedules]]
name = "hourly-check"
cron = "0 * * * *"
agent = "veblen"
goal = "Check the news."
overlap = "queue"
"""


def run(ws: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--workspace", str(ws), *args])
    return res.exit_code, res.stdout, res.stderr


def runs(ws: Path) -> list[dict[str, object]]:
    code, out, _ = run(ws, "status", "--json")
    assert code == 0, out
    return sorted(json.loads(out), key=lambda r: int(str(r["id"])))


def test_schedules_list_json(workspace_dir: Path) -> None:
    config = workspace_dir / "config/harness.toml"
    config.write_text(config.read_text() + SCHEDULES)
    code, out, _ = run(workspace_dir, "schedules", "list", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert [s["name"] for s in data] == ["hourly-check", "morning"]
    hourly, morning = data
    assert hourly["agent"] == "veblen" and hourly["overlap"] == "queue"
    assert hourly["timezone"] == "UTC" and hourly["next_fire_at"].endswith(":00:00+00:00")
    assert morning["agent"] == "arnold" and morning["overlap"] == "skip"
    assert morning["next_fire_at"][11:19] == "06:00:00"
    assert morning["last_fire_at"] is None and morning["last_run_id"] is None
    code, out, _ = run(workspace_dir, "schedules", "list")
    assert code == 0 and "morning" in out and "0 6 * * *" in out


def test_schedules_list_without_schedules(workspace_dir: Path) -> None:
    code, out, _ = run(workspace_dir, "schedules", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(workspace_dir, "schedules", "list")
    assert code == 0 and "no schedules" in out


def test_report_writes_markdown_to_a_file_or_stdout(workspace_dir: Path, tmp_path: Path) -> None:
    code, _, _ = run(workspace_dir, "submit", "Brief me on HBM supply")
    assert code == 0
    target = tmp_path / "reports" / "morning.md"
    code, out, err = run(workspace_dir, "report", "--out", str(target))
    assert code == 0 and out == "" and str(target) in err
    text = target.read_text()
    assert text.startswith("# Morning report\n\nPeriod: ")
    assert "(UTC)" in text and "## Still running (1)" in text and "Brief me on HBM supply" in text
    code, out, _ = run(workspace_dir, "report", "--since", "2d")
    assert code == 0 and out.startswith("# Morning report") and "## Slowest tasks" in out


def test_report_rejects_a_bad_since(workspace_dir: Path) -> None:
    code, _, err = run(workspace_dir, "report", "--since", "last tuesday")
    assert code == 2 and "--since" in err and "'last tuesday'" in err and "12h" in err


def test_parse_time() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/London")
    now = 1_717_300_000.0  # 2024-06-02 04:46:40 BST
    assert parse_time("12h", now, tz) == now - 12 * 3600
    assert parse_time("2d", now, tz) == now - 2 * 86400
    assert parse_time("30m", now, tz) == now - 1800
    assert parse_time("now", now, tz) == now
    assert parse_time("2024-06-01T20:00", now, tz) == 1_717_268_400.0  # 19:00 UTC (BST)
    assert parse_time("2024-06-01T19:00:00+00:00", now, tz) == 1_717_268_400.0
    assert parse_time("yesterday", now, tz) == parse_time("2024-06-01", now, tz)
    assert parse_time("2024-06-01", now, tz) == 1_717_196_400.0  # midnight BST
    assert parse_time("today", now, tz, end=True) == 1_717_369_200.0 - 1e-6
    with pytest.raises(ValueError, match="future"):
        parse_period("2030-01-01", None, now, tz)
    with pytest.raises(ValueError, match="after --until"):
        parse_period("today", "yesterday", now, tz)


def test_submit_from_plain_and_json_lines(workspace_dir: Path, tmp_path: Path) -> None:
    goals = tmp_path / "goals.txt"
    goals.write_text(
        "# tonight's questions\n"
        "Who makes HBM?\n"
        "\n"
        '{"goal": "Price the H100 rental market", "agent": "veblen"}\n'
        '{"goal": "  Summarise the week  "}\n'
    )
    code, out, _ = run(workspace_dir, "submit", "--from", str(goals), "--json")
    assert code == 0, out
    assert json.loads(out) == [1, 2, 3]
    got = [(r["goal"], r["agent"], r["status"]) for r in runs(workspace_dir)]
    assert got == [
        ("Who makes HBM?", "arnold", "queued"),
        ("Price the H100 rental market", "veblen", "queued"),
        ("Summarise the week", "arnold", "queued"),
    ]


def test_submit_from_with_agent_option_applies_to_plain_lines(
    workspace_dir: Path, tmp_path: Path
) -> None:
    goals = tmp_path / "goals.txt"
    goals.write_text('one\n{"goal": "two", "agent": "veblen"}\n')
    code, out, _ = run(workspace_dir, "submit", "--from", str(goals), "--agent", "simmons")
    assert code == 0, out
    assert [r["agent"] for r in runs(workspace_dir)] == ["simmons", "veblen"]


def test_submit_from_bad_json_line_exits_2_and_enqueues_nothing(
    workspace_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    goals = tmp_path / "goals.txt"
    goals.write_text('first goal\n{"goal": "ok"}\n{"goal": "broken",\n{"goal": 3}\n')
    res = runner.invoke(app, ["--workspace", str(workspace_dir), "submit", "--from", str(goals)])
    assert res.exit_code == 2 and "2 problems" in res.stderr
    assert f"{goals}:3: not valid JSON" in res.stderr and f"{goals}:4: goal" in res.stderr
    # the console entry point maps it to exit code 2 with every problem listed
    argv = ["harness", "--workspace", str(workspace_dir), "submit", "--from", str(goals)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{goals}:3: not valid JSON" in err and f"{goals}:4: goal: needs a non-empty" in err
    assert runs(workspace_dir) == []


def test_submit_from_unknown_agent_enqueues_nothing(workspace_dir: Path, tmp_path: Path) -> None:
    goals = tmp_path / "goals.txt"
    goals.write_text('good\n{"goal": "g", "agent": "nobody"}\n')
    code, _, err = run(workspace_dir, "submit", "--from", str(goals))
    assert code == 2 and "unknown agent 'nobody'" in err
    assert runs(workspace_dir) == []
