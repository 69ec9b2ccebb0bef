"""The agent loop with a scripted provider: outcomes, limits, delegation, budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from harness.errors import ProviderError
from harness.loop import _Tally
from harness.messages import ChatMessage, ChatRequest, FunctionCall, ToolCall
from harness.store import queue, views
from harness.store.schema import TaskStatus, calls, notes
from harness.testing import ScriptedProvider, StepLike
from harness.usage import Usage
from tests.helpers import by_agent, runtime, set_front_matter, submit, work

pytestmark = pytest.mark.anyio


async def test_final_answer_is_recorded_with_its_ledger_row(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[note_search, note_append]")
    rt, provider = runtime(workspace_dir, [ScriptedProvider.text("Veblen's answer.")])
    run_id, task_id = await submit(rt, "Which books explain inference economics?", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done" and run["answer"] == "Veblen's answer."
    assert run["usage"]["calls"] == 1 and run["usage"]["prompt_tokens"] > 0
    req = provider.requests[0]
    assert req.messages[0].role == "system" and "R. Veblen" in (req.messages[0].content or "")
    assert req.messages[1].content == "Which books explain inference economics?"
    # stable content first: the tool list is sorted and identical across steps
    assert [t.function.name for t in req.tools or []] == ["note_append", "note_search"]
    transcript = await rt.store.read(views.transcript, task_id)
    assert [m["role"] for m in transcript] == ["system", "user", "assistant"]


async def test_a_one_step_task_takes_two_write_transactions(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The opening messages go in with the first reservation, and the answer, its ledger row
    and the task's completion commit together: nothing can fall between them."""
    from harness.loop import TaskRunner
    from harness.store import workers

    rt, _ = runtime(workspace_dir, [ScriptedProvider.text("done")])
    _, task_id = await submit(rt, "a goal", "veblen")
    wid = await rt.store.write(workers.register_worker, 1)
    [task] = await rt.store.write(queue.claim, wid, 60)
    writes: list[str] = []
    real = rt.store.write

    async def spy(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        writes.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(rt.store, "write", spy)
    assert await TaskRunner(rt, task, wid).run() == TaskStatus.DONE
    assert writes == ["_next_attempt_tx", "_persist_step_tx"]
    transcript = await rt.store.read(views.transcript, task_id)
    assert [m["role"] for m in transcript] == ["system", "user", "assistant"]
    assert (await rt.store.read(queue.get_task, task_id)).result == "done"  # type: ignore[union-attr]
    await rt.aclose()


async def test_tool_call_runs_and_the_step_continues(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[note_search, note_append]")
    rt, _provider = runtime(
        workspace_dir,
        [
            ScriptedProvider.tool_call("note_append", {"text": "HBM is the bottleneck"}),
            ScriptedProvider.tool_call("read_file", {"path": "x"}),  # not allowed for veblen
            ScriptedProvider.tool_call("note_append", {"wrong": 1}),  # invalid arguments
            ScriptedProvider.text("done"),
        ],
    )
    run_id, task_id = await submit(rt, "remember", "veblen")
    await work(rt)
    transcript = await rt.store.read(views.transcript, task_id)
    results = [m["content"] for m in transcript if m["role"] == "tool"]
    assert len(results) == 3
    assert "not allowed" in results[1].lower() or "not available" in results[1].lower()
    assert "text" in results[2]  # names the missing field
    texts = await rt.store.read(lambda c: c.execute(select(notes.c.text)).scalars().all())
    assert texts == ["HBM is the bottleneck"]
    assert (await rt.store.read(views.get_run, run_id))["status"] == "done"  # type: ignore[index]


async def test_max_steps_withholds_tools_on_the_last_step_then_fails(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "max_steps", "3")
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[note_search]")
    seen: list[ChatRequest] = []

    def always_tools(request: ChatRequest) -> StepLike:
        seen.append(request)
        return ScriptedProvider.tool_call("note_search", {"query": f"q{len(seen)}"})

    rt, _ = runtime(workspace_dir, always_tools)
    run_id, _ = await submit(rt, "loop", "veblen")
    await work(rt)
    assert [r.tool_choice for r in seen] == ["auto", "auto", "none"]
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "failed" and "max_steps=3" in run["error"]


async def test_repeated_identical_tool_calls_stop_the_task(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[note_search]")
    rt, _ = runtime(
        workspace_dir, lambda r: ScriptedProvider.tool_call("note_search", {"query": "same"})
    )
    run_id, _ = await submit(rt, "loop", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "failed"
    assert "loop detected" in run["error"] and "note_search" in run["error"]


async def test_wall_clock_limit_ends_the_task(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/veblen.md", "timeout_s", "0.2")
    rt, _ = runtime(workspace_dir, [ScriptedProvider.text("slow", delay_s=2)])
    run_id, _ = await submit(rt, "slow", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "failed" and "wall-clock" in run["error"]


def _arnold_fans_out(request: ChatRequest) -> StepLike:
    tool_results = [m for m in request.messages if m.role == "tool"]
    if not tool_results:
        return ScriptedProvider.tool_calls(
            *[
                ("delegate", {"agent": a, "task": f"part for {a}"})
                for a in ("veblen", "simmons", "bradlee", "gulbenkian")
            ]
        )
    summary = "; ".join(f"{m.content}" for m in tool_results)
    return ScriptedProvider.text(f"Final: {summary}")


async def test_delegation_fans_out_and_a_failed_child_is_reported(
    workspace_dir: Path, db_url: str
) -> None:
    (workspace_dir / "config/harness.toml").write_text(
        (workspace_dir / "config/harness.toml")
        .read_text()
        .replace("max_attempts = 3", "max_attempts = 1")
    )
    failing = ProviderError("server down", provider="p", model="local", status=500, body="oops")
    rt, provider = runtime(
        workspace_dir,
        by_agent(
            {
                "arnold": _arnold_fans_out,
                "veblen": lambda r: ScriptedProvider.text("books"),
                "simmons": lambda r: failing,
                "bradlee": lambda r: ScriptedProvider.text("structure"),
                "gulbenkian": lambda r: ScriptedProvider.text("frameworks"),
            }
        ),
        db_url,
    )
    run_id, _root = await submit(rt, "briefing")
    await work(rt, concurrency=4)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done"
    kids = run["tasks"][0]["children"]
    assert sorted((k["agent"], k["status"]) for k in kids) == [
        ("bradlee", "done"),
        ("gulbenkian", "done"),
        ("simmons", "failed"),
        ("veblen", "done"),
    ]
    answer = run["answer"]
    assert "books" in answer and "frameworks" in answer and "server down" in answer
    # the parent was called twice (delegate, then final); it held no worker while waiting
    arnold_calls = [r for r in provider.requests if "Mini Arnold" in (r.messages[0].content or "")]
    assert len(arnold_calls) == 2
    first = arnold_calls[0]
    forced = {"type": "function", "function": {"name": "delegate"}}
    assert first.tool_choice == forced and first.min_tool_calls == 2
    [spec] = first.tools or []
    assert spec.function.parameters["properties"]["agent"]["enum"] == [
        "veblen",
        "simmons",
        "bradlee",
        "gulbenkian",
    ]
    # the run's roll-up includes every descendant's calls
    n_calls = await rt.store.read(
        lambda c: c.execute(select(func.count()).select_from(calls)).scalar()
    )
    assert run["usage"]["calls"] == n_calls == 6
    await rt.aclose()


async def test_delegation_limits_are_enforced(workspace_dir: Path) -> None:
    toml = workspace_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace("max_children = 8", "max_children = 1"))
    set_front_matter(workspace_dir / "agents/arnold.md", "min_delegations", "0")

    def arnold(request: ChatRequest) -> StepLike:
        if not any(m.role == "tool" for m in request.messages):
            return ScriptedProvider.tool_calls(
                ("delegate", {"agent": "veblen", "task": "a"}),
                ("delegate", {"agent": "nobody", "task": "b"}),
            )
        return ScriptedProvider.text("ok")

    rt, _ = runtime(
        workspace_dir, by_agent({"arnold": arnold, "veblen": lambda r: ScriptedProvider.text("v")})
    )
    _run_id, root = await submit(rt, "go")
    await work(rt)
    transcript = await rt.store.read(views.transcript, root)
    results = {m["tool_call_id"]: m["content"] for m in transcript if m["role"] == "tool"}
    assert any("cannot delegate to 'nobody'" in v for v in results.values())
    assert "v" in results.values()


async def test_budget_pauses_the_task_and_a_raised_budget_resumes_it(workspace_dir: Path) -> None:
    agent_file = workspace_dir / "agents/veblen.md"
    set_front_matter(agent_file, "daily_token_budget", "700")
    spent = Usage(prompt_tokens=500, completion_tokens=150)  # the first run leaves 50
    rt, provider = runtime(workspace_dir, lambda r: ScriptedProvider.text("answer", usage=spent))
    await submit(rt, "research", "veblen")
    await work(rt)
    second, _ = await submit(rt, "more research", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, second)
    assert run is not None and run["status"] == "paused"
    assert "veblen" in run["reason"] and "daily token budget" in run["reason"]
    assert len(provider.requests) == 1  # the second call was never sent
    set_front_matter(agent_file, "daily_token_budget", "100000")
    w = await work(rt)  # maintenance on start reloads the agent and requeues the task
    run = await rt.store.read(views.get_run, second)
    assert run is not None and run["status"] == "done", run
    assert w.id > 0


async def test_calls_that_settle_over_the_budget_pause_their_agent_at_once(
    workspace_dir: Path,
) -> None:
    """Two calls in flight at once, each reserved within the budget; the server counts far
    more than was estimated (dense text), so they settle over it together. From then on no
    call of the agent starts: both tasks pause, each before its next call."""
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "2500")
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[note_append]")
    dense = Usage(prompt_tokens=1300, completion_tokens=20)  # estimated: a few hundred
    call = ScriptedProvider.tool_call("note_append", {"text": "x"}, usage=dense, delay_s=0.3)
    rt, provider = runtime(workspace_dir, [call, call])
    runs = [(await submit(rt, f"research {i}", "veblen"))[0] for i in range(2)]
    await work(rt, concurrency=2)
    found = [await rt.store.read(views.get_run, r) for r in runs]
    assert all(r is not None and r["status"] == "paused" for r in found), found
    assert all("daily token budget" in (r or {})["reason"] for r in found)
    assert len(provider.requests) == 2  # nothing started after they settled
    used = await rt.store.read(
        lambda c: c.execute(
            select(func.sum(calls.c.prompt_tokens + calls.c.completion_tokens))
        ).scalar_one()
    )
    assert used == 2640 > 2500  # the ledger says what the server counted, over budget
    await rt.aclose()


async def test_a_call_larger_than_the_whole_budget_fails_and_says_why(workspace_dir: Path) -> None:
    """Pausing until tomorrow would pause it forever (and its parent with it): it fails, and
    the reason names the budget and the call's size."""
    set_front_matter(workspace_dir / "agents/veblen.md", "daily_token_budget", "50")
    rt, provider = runtime(workspace_dir, [ScriptedProvider.text("answer")])
    run_id, _ = await submit(rt, "research", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "failed"
    assert "daily token budget of 50" in run["error"] and "needs at least" in run["error"]
    assert provider.requests == []  # never sent


async def test_cancel_run_cancels_the_whole_tree(workspace_dir: Path) -> None:
    rt, _ = runtime(workspace_dir, by_agent({"arnold": _arnold_fans_out}))
    run_id, root = await submit(rt, "go")

    async def parent_waits() -> bool:
        task = await rt.store.read(queue.get_task, root)
        return task is not None and task.status == TaskStatus.WAITING

    await work(rt, concurrency=1, stop_when=parent_waits)
    assert await rt.store.write(queue.cancel_run, run_id) == 5
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "cancelled"
    assert {k["status"] for k in run["tasks"][0]["children"]} == {"cancelled"}
    await work(rt)  # nothing left to run
    assert (await rt.store.read(views.get_run, run_id))["status"] == "cancelled"  # type: ignore[index]


async def test_unknown_agent_fails_clearly(workspace_dir: Path) -> None:
    rt, _ = runtime(workspace_dir, [])
    run_id, _ = await submit(rt, "x", "nobody")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert (
        run is not None and run["status"] == "failed" and "unknown agent 'nobody'" in run["error"]
    )
    assert json.dumps(run)  # JSON-ready


async def test_status_tokens_sum_children(workspace_dir: Path) -> None:
    rt, _ = runtime(
        workspace_dir,
        by_agent(
            {
                "arnold": _arnold_fans_out,
                **{
                    a: (lambda r: ScriptedProvider.text("x"))
                    for a in ("veblen", "simmons", "bradlee", "gulbenkian")
                },
            }
        ),
    )
    run_id, _ = await submit(rt, "go")
    await work(rt)
    [listed] = await rt.store.read(views.list_runs)
    assert listed["status"] == TaskStatus.DONE
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None
    tree_total = run["tasks"][0]["usage"]["total_tokens"] + sum(
        k["usage"]["total_tokens"] for k in run["tasks"][0]["children"]
    )
    assert listed["usage"]["total_tokens"] == tree_total > 0


async def test_delegation_rounds_limit_makes_the_chief_answer(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/arnold.md", "delegation_rounds", "1")
    rt, provider = runtime(
        workspace_dir,
        by_agent(
            {
                "arnold": _arnold_fans_out,
                **{
                    a: (lambda r: ScriptedProvider.text("x"))
                    for a in ("veblen", "simmons", "bradlee", "gulbenkian")
                },
            }
        ),
    )
    run_id, _ = await submit(rt, "go")
    await work(rt)
    arnold = [r for r in provider.requests if "Mini Arnold" in (r.messages[0].content or "")]
    # after one settled round of delegation the delegate tool is no longer offered
    assert "delegate" in [t.function.name for t in arnold[0].tools or []]
    assert "delegate" not in [t.function.name for t in arnold[1].tools or []]
    assert (await rt.store.read(views.get_run, run_id))["status"] == "done"  # type: ignore[index]


def test_the_tally_counts_a_transcript_as_it_grows() -> None:
    """What the tool offer and the limits read of a transcript (delegation rounds, agents
    delegated to, the most repeated call) is counted message by message, not walked again."""

    def calls(*specs: tuple[str, str, dict[str, str] | str]) -> ChatMessage:
        made = [
            ToolCall(
                id=cid,
                function=FunctionCall(
                    name=name, arguments=args if isinstance(args, str) else json.dumps(args)
                ),
            )
            for cid, name, args in specs
        ]
        return ChatMessage(role="assistant", tool_calls=made)

    def result(cid: str) -> ChatMessage:
        return ChatMessage(role="tool", tool_call_id=cid, content="ok")

    tally = _Tally()
    tally.note(ChatMessage(role="system", content="s"))
    tally.note(ChatMessage(role="user", content="u"))
    tally.note(calls(("a", "delegate", {"agent": "veblen"}), ("b", "delegate", "not json")))
    assert tally.delegated_to == {"veblen"} and tally.delegation_rounds() == 0
    tally.note(result("a"))  # one of the step's delegations answered: the step is settled
    assert tally.delegation_rounds() == 1
    tally.note(result("b"))
    assert tally.delegation_rounds() == 1  # a round is a step, however many it fanned out to
    tally.note(calls(("c", "delegate", '["a list"]'), ("d", "web_fetch", {"url": "x"})))
    assert tally.delegated_to == {"veblen"} and tally.delegation_rounds() == 1
    assert (tally.steps, tally.tool_calls) == (2, 1)
    tally.note(calls(("e", "web_fetch", '{"url":"x"}')))  # the same arguments, other spacing
    assert tally.most_repeated == (("web_fetch", '{"url": "x"}'), 2)
    tally.note(result("c"))
    assert tally.delegation_rounds() == 2
    assert tally.call_ids == {"a", "b", "c", "d", "e"}
