"""Helpers for the MCP tests: configuring servers in a workspace, the fixture server over
HTTP, and the tool messages a model was sent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.messages import ChatRequest

FIXTURE = Path(__file__).with_name("mcp_fixture.py")
TIME_SERVER = Path(sys.executable).with_name("mcp-server-time")


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def add_server(ws: Path, name: str, **keys: Any) -> None:
    """Append ``[mcp.servers.NAME]`` with ``keys`` to the workspace's config."""
    lines = [f"\n[mcp.servers.{name}]", *(f"{k} = {_toml(v)}" for k, v in keys.items())]
    with (ws / "config/harness.toml").open("a") as f:
        f.write("\n".join(lines) + "\n")


def add_fixture(ws: Path, name: str = "fx", **keys: Any) -> None:
    """The fixture server over stdio as ``name``."""
    keys.setdefault("args", [str(FIXTURE), "stdio"])
    add_server(ws, name, command=sys.executable, **keys)


def tool_messages(request: ChatRequest) -> dict[str, str]:
    """``{tool name: content}`` of the tool results in a request."""
    return {m.name or "": m.content or "" for m in request.messages if m.role == "tool"}


def offered(request: ChatRequest) -> list[str]:
    return [t.function.name for t in request.tools or []]


@contextmanager
def http_fixture(token: str | None = None, port: int = 0) -> Iterator[str]:
    """The fixture server over streamable HTTP on 127.0.0.1; yields its URL."""
    cmd = [sys.executable, str(FIXTURE), "http", "--port", str(port)]
    cmd += ["--token", token] if token else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
