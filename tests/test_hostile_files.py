"""Broken and hostile files and settings (issue 13, "from files and config"; issue 19, item 2).

Agent files, ``harness.toml`` and ``HARNESS_*`` variables: every mistake is a problem with a
file (or variable), a line when there is one, a field and a fix where one is known; exit 2;
never a traceback, never a hang. A fuzz test (hypothesis) of agent front matter checks that
reading never raises and that every problem points into the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from harness.agents import read_agent_file
from harness.cli import app
from harness.errors import ConfigError
from harness.settings import load_settings, load_workspace

runner = CliRunner()

GOOD = "---\nname: {name}\ndescription: d\n{extra}---\nYou are a test agent.\n"


def _agent(ws: Path, name: str, extra: str = "", text: str | None = None) -> Path:
    path = ws / "agents" / f"{name}.md"
    path.write_text(text if text is not None else GOOD.format(name=name, extra=extra))
    return path


def _validate(ws: Path) -> tuple[int, list[dict[str, object]]]:
    res = runner.invoke(app, ["--workspace", str(ws), "agents", "validate", "--json"])
    data = json.loads(res.stdout)
    return res.exit_code, data["problems"]


# (front matter lines after name and description, problems as (line, field, words))
AGENT_CASES: dict[str, tuple[str, list[tuple[int | None, str | None, str]]]] = {
    "a budget past 64 bits": (
        "daily_token_budget: 100000000000000000000000\n",
        [(4, "daily_token_budget", "less than or equal to")],
    ),
    "a budget in exponent notation": (
        "daily_token_budget: 1.0e+23\n",
        [(4, "daily_token_budget", "valid integer")],
    ),
    "max_tokens as text": ("max_tokens: 1e20\n", [(4, "max_tokens", "valid integer")]),
    "a boolean for a number": (
        "daily_token_budget: true\n",
        [(4, "daily_token_budget", "integer")],
    ),
    "NaN for a temperature": ("temperature: .nan\n", [(4, "temperature", "finite number")]),
    "a duplicate key": (
        "tools: []\ntools: [read_file]\n",
        [(5, None, "duplicate key 'tools' (first at line 4)")],
    ),
    "an alias": ("tools: &t [read_file]\ndelegates_to: *t\n", [(5, None, "aliases")]),
    "a tool name as a string": ("tools: read_file\n", [(4, "tools", "valid list")]),
    "a mistyped field": ("delegate_to: [veblen]\n", [(4, "delegate_to", "unknown field")]),
    "a mistyped tool": ("tools: [read_file, web_fech]\n", [(4, "tools", "unknown tool")]),
    "a schema error does not hide the others": (
        "model: nope\nmax_steps: 0\ntools:\n  - web_fech\ndelegates_to: [ghost]\n",
        [
            (4, "model", "unknown model 'nope'"),
            (5, "max_steps", "greater than or equal to 1"),
            (7, "tools", "unknown tool 'web_fech'"),
            (8, "delegates_to", "unknown delegate target 'ghost'"),
        ],
    ),
    "delegate listed as a tool": ("tools: [delegate]\n", [(4, "tools", "delegates_to")]),
    "a YAML error, its line counted from the file": (
        "max_steps: 3\ntools: [read_file\n",
        [(5, None, "malformed YAML: while parsing a flow sequence")],
    ),
}


@pytest.mark.parametrize("case", sorted(AGENT_CASES))
def test_agent_file_problems_have_line_field_and_message(workspace_dir: Path, case: str) -> None:
    extra, expected = AGENT_CASES[case]
    path = _agent(workspace_dir, "probe", extra)
    code, problems = _validate(workspace_dir)
    mine = [(p["line"], p["field"], p["message"]) for p in problems if p["file"] == str(path)]
    assert code == 2 and len(mine) == len(expected), mine
    for (line, field, message), (want_line, want_field, words) in zip(mine, expected, strict=True):
        assert line == want_line and field == want_field and words in str(message), mine
        assert ", line " not in str(message)  # PyYAML's own count is from the front matter
    assert [p for p in problems if p["file"] != str(path)] == []  # no noise from it


def test_fix_hints_name_the_likely_fix(workspace_dir: Path) -> None:
    _agent(workspace_dir, "probe", "tools: [web_fech]\ndelegate_to: [veblen]\nmodel: locl\n")
    _, problems = _validate(workspace_dir)
    hints = {p["field"]: p["hint"] for p in problems}
    assert hints == {
        "tools": "did you mean `web_fetch`?",
        "delegate_to": "did you mean `delegates_to`?",
        "model": "did you mean `local`?",
    }


def test_a_bom_is_accepted(workspace_dir: Path) -> None:
    path = _agent(workspace_dir, "probe")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert _validate(workspace_dir) == (0, [])
    assert read_agent_file(path).problems == []


@pytest.mark.parametrize("kind", ["fifo", "folder", "not utf-8", "deep", "dangling link"])
def test_files_that_cannot_be_agents_are_refused_without_hanging(
    workspace_dir: Path, kind: str
) -> None:
    path = workspace_dir / "agents" / "probe.md"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    elif kind == "folder":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"---\nname: probe\ndescription: caf\xe9\n---\nbody\n")
    elif kind == "deep":
        path.write_text("---\nname: probe\ndescription: " + "[" * 50_000 + "\n---\nbody\n")
    else:
        path.symlink_to(workspace_dir / "nowhere.md")
    code, problems = _validate(workspace_dir)
    [problem] = problems
    assert code == 2 and problem["file"] == str(path)
    words = {
        "fifo": "not a regular file",
        "folder": "is a folder",
        "not utf-8": "not UTF-8",
        "deep": "nested too deeply",
        "dangling link": "cannot read",
    }[kind]
    assert words in str(problem["message"]), problem


def test_a_broken_file_does_not_make_its_delegators_fail(workspace_dir: Path) -> None:
    """arnold delegates to veblen: a broken veblen.md is veblen's problem only."""
    veblen = workspace_dir / "agents/veblen.md"
    veblen.write_text(veblen.read_text().replace("description:", "description: [", 1))
    code, problems = _validate(workspace_dir)
    assert code == 2 and [Path(str(p["file"])).name for p in problems] == ["veblen.md"]


def test_validate_reports_every_file_in_file_and_line_order(workspace_dir: Path) -> None:
    _agent(workspace_dir, "zeta", "max_steps: 0\ntools: [nope]\n")
    _agent(workspace_dir, "alpha", "tools: [nope]\nmax_steps: -1\n")
    (workspace_dir / "tools/broken.py").write_text("import sys\nsys.exit(3)\n")
    code, problems = _validate(workspace_dir)
    where = [(str(p["file"]), p["line"] or 0) for p in problems]
    assert code == 2 and where == sorted(where)
    files = {Path(file).name for file, _ in where}
    assert (str(workspace_dir / "tools/broken.py"), 2) in where  # sys.exit() at import
    assert {"alpha.md", "zeta.md", "broken.py"} <= files
    tool_hints = {p["hint"] for p in problems if "unknown tool" in str(p["message"])}
    assert tool_hints == {"broken.py failed to load and may define it"}
    # on a terminal: file:line: field: message (hint), one a line, exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "-w", str(workspace_dir), "agents", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{workspace_dir / 'agents/alpha.md'}:4: tools: unknown tool 'nope'" in proc.stderr


# -- fuzz: front matter never raises, every problem points into the file -------------------

FIELDS = ["name", "description", "model", "tools", "delegates_to", "daily_token_budget"]
FIELDS += ["max_steps", "max_tokens", "temperature", "timeout_s", "min_delegations", "x"]
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["probe", "read_file", "veblen", "local", "1e20", "[", "&a", "*a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8),
    noise=st.text(max_size=40),
    raw=st.booleans(),
)
def test_fuzz_front_matter_is_an_agent_or_located_problems(
    tmp_path: Path, fields: dict[str, object], noise: str, raw: bool
) -> None:
    front = noise if raw else json.dumps(fields)  # JSON is YAML: any value, any nesting
    text = f"---\n{front}\n---\nbody\n"
    path = tmp_path / "probe.md"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    af = read_agent_file(path)
    assert af.spec is not None or af.problems
    total = text.count("\n") + 1
    for problem in af.problems:
        assert problem.file == str(path)
        assert problem.line is None or 1 <= problem.line <= total, problem
        assert problem.message


# -- harness.toml and the environment -------------------------------------------------------

TOML_CASES: dict[str, tuple[str, str, str]] = {
    # replace this line of the shipped config, with this, and expect these words
    "a lease of a millisecond": ("lease_s = 60", "lease_s = 0.001", "worker.lease_s"),
    "a boolean for a number": ("concurrency = 4", "concurrency = true", "valid integer"),
    "an integer past 64 bits": (
        "max_attempts = 3",
        "max_attempts = 99999999999999999999",
        "worker.max_attempts",
    ),
    "infinity": ("task_timeout_s = 1800", "task_timeout_s = inf", "finite number"),
    "a float for a count": ("max_steps = 12", "max_steps = 1e20", "limits.max_steps"),
    "an unknown log level": ('log_level = "info"', 'log_level = "loud"', "unknown level"),
    "a mistyped key": ("grace_s = 30", "grace = 30", "did you mean `grace_s`?"),
    "a report outside the workspace": (
        "# [[schedules]]",
        '[[schedules]]\nname = "r"\ncron = "0 6 * * *"\nreport = "/etc/cron.daily/x"\n',
        "leaves the workspace",
    ),
}


@pytest.mark.parametrize("case", sorted(TOML_CASES))
def test_bad_settings_name_the_key_and_exit_2(workspace_dir: Path, case: str) -> None:
    old, new, words = TOML_CASES[case]
    cfg = workspace_dir / "config/harness.toml"
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    res = runner.invoke(app, ["--workspace", str(workspace_dir), "status"])
    assert res.exit_code == 2 and words in res.stderr, res.stderr
    assert str(cfg) in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("kind", ["folder", "not utf-8", "fifo", "bom"])
def test_a_config_file_that_is_not_text_is_a_clear_error(workspace_dir: Path, kind: str) -> None:
    cfg = workspace_dir / "config/harness.toml"
    text = cfg.read_bytes()
    cfg.unlink()
    if kind == "folder":
        cfg.mkdir()
    elif kind == "not utf-8":
        cfg.write_bytes(text.replace(b'timezone = "UTC"', b'timezone = "\xe9"'))
    elif kind == "fifo":
        os.mkfifo(cfg)
    else:
        cfg.write_bytes(b"\xef\xbb\xbf" + text)
        assert load_settings(workspace_dir).timezone == "UTC"
        return
    with pytest.raises(ConfigError) as info:
        load_workspace(workspace_dir)
    [problem] = info.value.problems
    assert problem.file == str(cfg)
    assert {"folder": "is a folder", "not utf-8": "not UTF-8", "fifo": "not a regular"}[
        kind
    ] in problem.message


def test_an_environment_problem_names_the_variable(workspace_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(workspace_dir, {"HARNESS_WORKER__LEASE_S": "0.001"})
    [problem] = info.value.problems
    assert problem.file == "environment variable HARNESS_WORKER__LEASE_S"
    assert problem.field == "worker.lease_s" and "0.3" in problem.message


def test_text_settings_from_the_environment_stay_text(workspace_dir: Path) -> None:
    env = {"HARNESS_CHIEF": "123", "HARNESS_TIMEZONE": "Europe/Paris"}
    s = load_settings(workspace_dir, env)
    assert s.chief == "123" and s.timezone == "Europe/Paris"


def test_an_unknown_variable_is_a_warning_not_a_refusal(workspace_dir: Path) -> None:
    env = {"HARNESS_FOO": "1", "HARNESS_WORKER__SPEED": "3", "HARNESS_LOG_LEVL": "debug"}
    with structlog.testing.capture_logs() as logs:
        settings_ = load_settings(workspace_dir, env)
    assert settings_.worker.concurrency == 4
    warned = [e["problem"] for e in logs if e["event"] == "unknown_environment_variable"]
    assert len(warned) == 3
    assert any("HARNESS_LOG_LEVL" in w and "did you mean `log_level`?" in w for w in warned)


@pytest.mark.parametrize("level", ["info", "WARNING"])
def test_log_level_from_the_config_is_read(workspace_dir: Path, level: str) -> None:
    cfg = workspace_dir / "config/harness.toml"
    cfg.write_text(cfg.read_text().replace('log_level = "info"', f'log_level = "{level}"'))
    assert load_settings(workspace_dir).log_level == level.lower()
    env = {**os.environ, "HARNESS_BASE_URL": "http://127.0.0.1:9/v1"}  # no local server
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "-w", str(workspace_dir), "worker", "--until-idle"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert ("worker_started" in proc.stderr) == (level == "info")
