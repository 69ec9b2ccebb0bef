"""Run one worker (until idle) on a workspace with a scripted provider that logs each request.

Used by tests/test_crash.py as a subprocess: ``python -m tests.crash_agent WORKSPACE LOG``.
The script calls the workspace's ``boom`` tool once, then answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from harness.messages import ChatRequest
from harness.testing import ScriptedProvider, StepLike
from tests.helpers import runtime, work


def main(ws_dir: str, log_path: str) -> None:
    def script(request: ChatRequest) -> StepLike:
        with open(log_path, "a") as log:
            log.write(f"{len(request.messages)}\n")
        if any(m.role == "tool" for m in request.messages):
            return ScriptedProvider.text("final answer after the tool")
        return ScriptedProvider.tool_call("boom", {"note": "once"})

    rt, _ = runtime(Path(ws_dir), script)
    anyio.run(work, rt)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
