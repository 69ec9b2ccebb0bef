"""MCP in the configuration and the CLI: settings errors, ``harness agents validate`` against
the servers, ``harness mcp list``, and no server process outliving harness."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.settings import load_settings
from harness.tools.mcp_adapt import tool_names
from tests.helpers import runtime, set_front_matter, submit, work
from tests.mcp_fixture import TOOLS
from tests.mcp_support import FIXTURE, add_fixture, add_server
from tests.processes import HARNESS, Procs, worker_env
from tests.test_mcp_client import descendants

runner = CliRunner()


def _problems(ws: Path, toml: str) -> list[tuple[str | None, str]]:
    (ws / "config/harness.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(ws)
    assert {p.file for p in caught.value.problems} == {str(ws / "config/harness.toml")}
    return [(p.field, p.message) for p in caught.value.problems]


def test_server_settings_are_validated_with_their_fields(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    both = '[mcp.servers.x]\ncommand = "x"\nurl = "http://h/mcp"\n'
    assert _problems(tmp_path, both) == [
        ("mcp.servers.x", "Value error, give either command (stdio) or url (streamable HTTP)")
    ]
    assert _problems(tmp_path, '[mcp.servers.x]\nurl = "ftp://h"\n') == [
        ("mcp.servers.x.url", "Value error, not an http(s) URL: 'ftp://h'")
    ]
    unbounded = '[mcp.servers.x]\ncommand = "x"\ntimeout_s = inf\nconnect_timeout_s = 0\n'
    fields = [f for f, _ in _problems(tmp_path, unbounded)]
    assert fields == ["mcp.servers.x.timeout_s", "mcp.servers.x.connect_timeout_s"]
    headers = '[mcp.servers.x]\ncommand = "x"\nheaders_env = { A = "B" }\n'
    assert _problems(tmp_path, headers) == [
        ("mcp.servers.x", "Value error, headers_env is for streamable HTTP servers (url)"),
    ]
    unknown = '[mcp.servers.x]\ncommand = "x"\nbogus = 1\n'
    assert _problems(tmp_path, unknown) == [("mcp.servers.x.bogus", "unknown key")]
    value = '[mcp.servers.x]\ncommand = "x"\nenv = ["TOKEN=ghp_123"]\n'  # a secret, by mistake
    assert _problems(tmp_path, value) == [  # and never echoed
        ("mcp.servers.x.env", "Value error, entry 1 is not a variable name (env names variables)")
    ]
    header = '[mcp.servers.x]\nurl = "http://h/mcp"\nheaders_env = { A = "Bearer x" }\n'
    assert _problems(tmp_path, header) == [
        ("mcp.servers.x.headers_env", "Value error, A: not a variable name (name the variable)")
    ]
    [(field, message)] = _problems(tmp_path, '[mcp.servers.a__b]\ncommand = "x"\n')
    assert field == "mcp.servers" and "server name 'a__b'" in message


def test_a_server_setting_can_come_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config/harness.toml").write_text('[mcp.servers.git]\ncommand = "g"\n')
    env = {"HARNESS_MCP__SERVERS__GIT__TIMEOUT_S": "5"}
    assert load_settings(tmp_path, env).mcp.servers["git"].timeout_s == 5


def test_agents_validate_checks_mcp_names_against_the_servers(workspace_dir: Path) -> None:
    add_fixture(workspace_dir, exclude=["env"])
    add_server(workspace_dir, "gone", command=str(workspace_dir / "missing"))
    block = "\n  - note_append\n  - fx__echo\n  - fx__*\n  - fx__nope\n  - fx__env"
    block += "\n  - fx__dotted.name/tool\n  - web__search\n  - gone__*"
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", block)
    res = runner.invoke(app, ["-w", str(workspace_dir), "agents", "validate", "--json"])
    assert res.exit_code == 2, res.output
    found = [(p["line"], p["field"], p["message"]) for p in json.loads(res.stdout)["problems"]]
    file = {p["file"] for p in json.loads(res.stdout)["problems"]}
    assert file == {str(workspace_dir / "agents/veblen.md")}
    text = (workspace_dir / "agents/veblen.md").read_text().splitlines()
    line = {name: text.index(f"  - {name}") + 1 for name in ("fx__nope", "fx__env", "gone__*")}
    line["fx__dotted.name/tool"] = text.index("  - fx__dotted.name/tool") + 1
    line["web__search"] = text.index("  - web__search") + 1
    assert found == [
        (line["fx__nope"], "tools", "MCP server 'fx' has no tool 'nope'; it has: "
         + ", ".join(_fx_tools("env"))),
        (line["fx__env"], "tools", "'fx__env' is excluded by config/harness.toml "
         "mcp.servers.fx.include/exclude"),
        (line["fx__dotted.name/tool"], "tools", "MCP server 'fx' has no tool "
         "'dotted.name/tool'; did you mean 'fx__dotted_name_tool'?"),
        (line["web__search"], "tools", "unknown MCP server 'web' in 'web__search' "
         "(config/harness.toml configures: fx, gone; add [mcp.servers.web])"),
        (line["gone__*"], "tools", "MCP server 'gone' is unavailable: FileNotFoundError: "
         f"[Errno 2] No such file or directory: '{workspace_dir / 'missing'}'"),
    ]  # fmt: skip
    assert descendants() == []  # the servers started for the check are stopped


def _fx_tools(*without: str) -> list[str]:
    """The fixture's tools as agents name them, but for ``without`` (its own names)."""
    names = tool_names("fx", [t.name for t in TOOLS])
    return sorted(name for name, raw in names.items() if raw not in without)


def test_agents_validate_passes_a_team_whose_mcp_names_resolve(workspace_dir: Path) -> None:
    add_fixture(workspace_dir)
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[fx__echo, fx__*]")
    res = runner.invoke(app, ["-w", str(workspace_dir), "agents", "validate", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True


def test_mcp_list_shows_each_server_its_status_and_tools(workspace_dir: Path) -> None:
    add_fixture(workspace_dir, include=["echo", "pid", "env"], exclude=["env"])
    add_server(workspace_dir, "web", url="http://127.0.0.1:9/mcp?key=SECRET", connect_timeout_s=5)
    complain = "import sys; print('fatal: no repository at /nope', file=sys.stderr); sys.exit(2)"
    add_server(workspace_dir, "sad", command=sys.executable, args=["-c", complain])
    res = runner.invoke(app, ["-w", str(workspace_dir), "mcp", "list", "--json"])
    assert res.exit_code == 1  # a server is unavailable
    fx, sad, web = json.loads(res.stdout)
    assert (fx["server"], fx["transport"], fx["status"], fx["error"]) == ("fx", "stdio", "up", None)
    assert fx["target"] == f"{sys.executable} {FIXTURE} stdio"
    assert [t["name"] for t in fx["tools"]] == ["fx__echo", "fx__pid"]
    echo = {"name": "fx__echo", "mcp_name": "echo", "description": "Echo the text back."}
    assert fx["tools"][0] == echo
    hidden = sorted(t.name for t in TOOLS if t.name not in ("echo", "pid"))
    assert fx["excluded"] == hidden  # by include, and env by exclude
    assert web["status"] == "unavailable" and "ConnectError" in web["error"]
    log = workspace_dir / "var/mcp/sad.log"  # what a server that died said is in its error
    assert (
        sad["error"]
        == f"Connection closed; its stderr ends: 'fatal: no repository at /nope' ({log})"
    )
    assert web["target"] == "http://127.0.0.1:9/mcp"  # no query string: it may hold a token
    assert descendants() == []


@pytest.mark.anyio
async def test_no_server_process_outlives_many_runs_in_process(workspace_dir: Path) -> None:
    tag = uuid.uuid4().hex
    add_fixture(workspace_dir, args=[str(FIXTURE), "stdio", "--tag", tag])
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[fx__pid]")
    for i in range(3):
        rt, _ = runtime(workspace_dir, lambda request: "done")
        await submit(rt, f"goal {i}", "veblen")
        await submit(rt, f"another goal {i}", "veblen")
        await work(rt, concurrency=2)
        assert len(descendants()) == 1  # one server per process, shared by its tasks
        await rt.aclose()
        assert descendants() == []


def _tagged(tag: str) -> list[int]:
    """Processes anywhere on the machine whose command line holds ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and tag.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_no_server_process_outlives_harness_run(workspace_dir: Path, procs: Procs) -> None:
    tag = uuid.uuid4().hex
    add_fixture(workspace_dir, args=[str(FIXTURE), "stdio", "--tag", tag])
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[fx__*]")
    fake = procs.fake()
    for i in range(2):
        cmd = [str(HARNESS), "-w", str(workspace_dir), "run", "--json", "--agent", "veblen"]
        proc = subprocess.run(
            [*cmd, f"goal {i}"],
            env=worker_env(fake.url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["status"] == "done"
        assert "mcp_server_started" in proc.stderr and "mcp_server_stopped" in proc.stderr
        assert _tagged(tag) == []
