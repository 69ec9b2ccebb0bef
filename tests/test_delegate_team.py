"""A new specialist is visible to the chief without editing its prompt (issue 19, item 7):
the delegate tool carries each delegate's description, in native and in JSON tool mode."""

from __future__ import annotations

from pathlib import Path

import anyio

from harness.messages import ChatRequest
from harness.provider.jsontools import encode_request
from harness.testing import ScriptedProvider
from tests.helpers import runtime, set_front_matter, submit, work

CURIE = """---
name: curie
description: Radiochemistry. Measures half-lives and explains decay chains.
tools: []
---
You are M. Curie, the team's radiochemist.
"""


def _chiefs_first_request(ws: Path) -> ChatRequest:
    (ws / "agents/curie.md").write_text(CURIE)
    set_front_matter(ws / "agents/arnold.md", "delegates_to", "[veblen, simmons, curie]")
    provider = ScriptedProvider(lambda request: "no delegation today")
    rt, _ = runtime(ws, provider)

    async def go() -> None:
        await submit(rt, "What decays fastest?")
        await work(rt, concurrency=1)
        await rt.aclose()

    anyio.run(go)
    return provider.requests[0]


def _delegate_description(request: ChatRequest) -> str:
    [spec] = [t for t in request.tools or [] if t.function.name == "delegate"]
    return spec.function.description


def test_the_delegate_tool_lists_every_delegate_with_its_description(workspace_dir: Path) -> None:
    request = _chiefs_first_request(workspace_dir)
    text = _delegate_description(request)
    assert "- curie: Radiochemistry. Measures half-lives and explains decay chains." in text
    assert "- veblen: R. Veblen, book research." in text and "- simmons: " in text
    assert "bradlee" not in text  # only the agents it may delegate to


def test_json_tool_mode_carries_the_descriptions_too(workspace_dir: Path) -> None:
    encoded = encode_request(_chiefs_first_request(workspace_dir))
    assert encoded.tools is None  # the tools moved into the prompt and the schema
    system = encoded.messages[0].content or ""
    assert "curie: Radiochemistry. Measures half-lives" in system


def test_the_chiefs_prompt_names_no_specialist(workspace_dir: Path) -> None:
    """The team is the delegate tool's to tell: a hand-written list would go stale."""
    body = (workspace_dir / "agents/arnold.md").read_text().split("\n---\n", 1)[1]
    for name in ("veblen", "simmons", "bradlee", "gulbenkian"):
        assert name not in body.lower()


def _delegating_run(ws: Path, task: str, goal: str) -> list[ChatRequest]:
    chief = iter(
        [
            ScriptedProvider.tool_calls(("delegate", {"agent": "veblen", "task": task})),
            ScriptedProvider.text("done"),
        ]
    )
    provider = ScriptedProvider(
        lambda request: next(chief) if "Arnold" in (request.messages[0].content or "") else "ok"
    )
    set_front_matter(ws / "agents/arnold.md", "min_delegations", "0")
    rt, _ = runtime(ws, provider)

    async def go() -> None:
        await submit(rt, goal)
        await work(rt, concurrency=1)
        await rt.aclose()

    anyio.run(go)
    return provider.requests


def test_a_childs_task_carries_the_goals_words(workspace_dir: Path) -> None:
    """A small model's task text drifts ("Decode"): the child reads the goal it serves too."""
    goal = "Why is decode memory-bound?"
    requests = _delegating_run(workspace_dir, "Decode", goal)
    [child] = [r for r in requests if "Veblen" in (r.messages[0].content or "")]
    assert child.messages[1].content == f"Decode\n\n(For: {goal})"


def test_a_task_that_quotes_the_goal_is_passed_as_written(workspace_dir: Path) -> None:
    goal = "Why is decode memory-bound?"
    task = f"List books for this question: {goal}"
    requests = _delegating_run(workspace_dir, task, goal)
    [child] = [r for r in requests if "Veblen" in (r.messages[0].content or "")]
    assert child.messages[1].content == task


def test_sampling_settings_from_the_agent_file_reach_the_request(workspace_dir: Path) -> None:
    veblen = workspace_dir / "agents/veblen.md"
    for key, value in (("top_p", "0.9"), ("frequency_penalty", "0.4"), ("seed", "11")):
        set_front_matter(veblen, key, value)
    provider = ScriptedProvider(lambda request: "ok")
    rt, _ = runtime(workspace_dir, provider)

    async def go() -> None:
        await submit(rt, "anything", "veblen")
        await work(rt, concurrency=1)
        await rt.aclose()

    anyio.run(go)
    [request] = provider.requests
    payload = request.payload("m", stream=False)
    assert (payload["top_p"], payload["frequency_penalty"], payload["seed"]) == (0.9, 0.4, 11)
    assert payload["temperature"] == rt.team["veblen"].temperature
    assert "presence_penalty" not in payload  # unset: the server's default
