"""Long work inside a bounded context window: large results kept as artifacts, old results
masked, old turns summarised (metered, recorded once), overflow errors recovered, the prompt
append-only between compactions, and the limits that end a task with their own reasons."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from harness.cli import app
from harness.context import COMPACTION
from harness.context.overflow import overflow
from harness.context.task import SUMMARISE
from harness.errors import ProviderError
from harness.messages import ChatMessage, ChatRequest
from harness.provider import OpenAIProvider
from harness.provider.tokens import estimate_prompt_tokens
from harness.runtime import build_runtime
from harness.settings import load_workspace
from harness.store import Store, queue, views
from harness.store.compactions import MASK, SUMMARY, load_compactions
from harness.store.model_stats import load_model_stats
from harness.store.schema import TaskStatus, artifacts, calls, tasks
from harness.store.transcripts import load_transcript
from harness.testing import ScriptedProvider, StepLike
from harness.testing.fakeserver import FakeConfig, FakeServer
from tests.helpers import runtime, set_front_matter, submit, work

pytestmark = pytest.mark.anyio

# a tool that hands out a book's chapters one per call (no arguments: what a fake server can
# call again and again), ~CHARS characters each; the chapter after the last says so
BOOK_TOOL = '''
from harness import tool
from harness.tools import ToolContext

WORDS = "inference demand memory bandwidth supply chain capital spending tokens".split()


@tool
def next_chapter(ctx: ToolContext) -> str:
    """Read the next chapter of the book (call it again for the one after)."""
    mark = ctx.workdir / f"chapter-of-task-{ctx.task_id}"
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    n = int(mark.read_text()) + 1 if mark.exists() else 1
    mark.write_text(str(n))
    if n > CHAPTERS:
        return "There are no more chapters."
    words = [f"{WORDS[(n * 7 + i) % len(WORDS)]}{(n * 31 + i) % 97}" for i in range(CHARS // 9)]
    return f"Chapter {n}. " + " ".join(words)
'''


def book(ws_dir: Path, chapters: int = 30, chars: int = 4200, *, agent: str = "veblen") -> None:
    """``agent`` reads a book of ``chapters`` chapters through ``next_chapter``."""
    code = BOOK_TOOL.replace("CHAPTERS", str(chapters)).replace("CHARS", str(chars))
    (ws_dir / "tools/book.py").write_text(code)
    set_front_matter(ws_dir / f"agents/{agent}.md", "tools", "[next_chapter, note_append]")
    set_front_matter(ws_dir / f"agents/{agent}.md", "max_steps", str(chapters + 2))


def no_loop_limit(ws_dir: Path) -> None:
    """The same call (``next_chapter()``) may come again and again."""
    toml = ws_dir / "config/harness.toml"
    text = toml.read_text()
    assert "loop_repeats = 3" in text
    toml.write_text(text.replace("loop_repeats = 3", "loop_repeats = 100"))


def small_window(ws_dir: Path, n_ctx: int) -> None:
    toml = ws_dir / "config/harness.toml"
    toml.write_text(toml.read_text().replace("n_ctx = 8192", f"n_ctx = {n_ctx}"))
    no_loop_limit(ws_dir)


def is_summary_request(request: ChatRequest) -> bool:
    return request.messages[0].content == SUMMARISE


def reader(chapters: int, answer: str = "The book, read.") -> Callable[[ChatRequest], StepLike]:
    """A script: one ``next_chapter`` call per step (two for chapters 4-5, 9-10, ...), a summary for
    each compaction request, the answer once every chapter was read."""
    calls = [0]

    def step(request: ChatRequest) -> StepLike:
        if is_summary_request(request):
            return ScriptedProvider.text(f"Summary: chapters 1-{calls[0]} read; they cover HBM.")
        if calls[0] >= chapters:
            return ScriptedProvider.text(answer)
        if calls[0] % 5 == 3 and calls[0] + 2 <= chapters:  # chapters 4-5, 9-10, ...
            calls[0] += 2
            return ScriptedProvider.tool_calls(("next_chapter", {}), ("next_chapter", {}))
        calls[0] += 1
        return ScriptedProvider.tool_call("next_chapter", {})

    return step


def assert_wire_valid(messages: Sequence[ChatMessage]) -> None:
    """What the OpenAI wire format requires: every tool result right after the assistant
    message that called it (with the calls' ids), every call answered before the next turn."""
    open_calls: set[str] = set()
    for i, m in enumerate(messages):
        if m.role == "tool":
            assert m.tool_call_id in open_calls, f"message {i}: a result without its call"
            open_calls.discard(m.tool_call_id)
            continue
        assert not open_calls, f"message {i}: calls {open_calls} have no result"
        if m.role == "assistant" and m.tool_calls:
            open_calls = {c.id for c in m.tool_calls}
    assert messages[0].role == "system" and messages[1].role == "user"


def dumped(messages: Sequence[ChatMessage]) -> list[str]:
    return [json.dumps(m.model_dump(exclude_none=True), sort_keys=True) for m in messages]


def prefix_breaks(requests: Sequence[ChatRequest]) -> int:
    """How often a step's prompt did not start with the previous step's prompt."""
    sent = [dumped(r.messages) for r in requests]
    return sum(1 for a, b in pairwise(sent) if b[: len(a)] != a)


def assert_turns_whole(store: Store, task_id: int) -> None:
    """A summary covers whole turns: it starts at an assistant message (after the opening)
    and the message after it is no tool result; a mask masks tool results only."""
    transcript = store.read_sync(load_transcript, task_id)
    by_seq = {sm.seq: sm.message for sm in transcript}
    for c in store.read_sync(load_compactions, task_id):
        after = by_seq.get(c.last_seq + 1)
        assert after is None or after.role != "tool", c
        if c.kind == SUMMARY:
            assert c.first_seq == 2 and by_seq[c.first_seq].role == "assistant", c
        else:
            assert all(by_seq[int(seq)].role == "tool" for seq in json.loads(c.summary)), c


async def test_thirty_chapters_on_a_6000_token_window_compact_and_finish(
    workspace_dir: Path,
) -> None:
    """The issue's user story: 30 chapters of ~1,200 tokens each through a tool, on a model
    with a 6,000-token window. Every request fits, every compaction covers whole turns, the
    summaries are metered (kind ``compaction``) and between compactions the prompt only grows."""
    book(workspace_dir, 30)
    small_window(workspace_dir, 6000)
    rt, provider = runtime(workspace_dir, reader(30))
    run_id, task_id = await submit(rt, "Read the whole book, then say what it argues.", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done", run
    assert run["answer"] == "The book, read."
    steps = [r for r in provider.requests if not is_summary_request(r)]
    summaries = [r for r in provider.requests if is_summary_request(r)]
    assert len(steps) == 30 - 6 + 1  # 30 chapters, two in each of six steps, then the answer
    window = rt.settings.models["local"].context_window
    assert window == 6000
    for r in provider.requests:
        assert_wire_valid(r.messages) if not is_summary_request(r) else None
        assert estimate_prompt_tokens(r) + (r.max_tokens or 0) <= window, "a request overflowed"
        assert r.prompt_estimate is not None
    records = rt.store.read_sync(load_compactions, task_id)
    kinds = [c.kind for c in records]
    assert MASK in kinds and SUMMARY in kinds
    assert len(summaries) == kinds.count(SUMMARY) and len(summaries) <= 8  # in chunks, rarely
    assert prefix_breaks(steps) <= len(records)  # append-only between compactions
    assert_turns_whole(rt.store, task_id)
    # each summary is a ledger row of kind compaction, the agent's, recorded with its record
    rows = rt.store.read_sync(
        lambda c: c.execute(select(calls.c.id, calls.c.kind, calls.c.agent)).all()
    )
    metered = {r.id for r in rows if r.kind == COMPACTION}
    assert len(metered) == len(summaries) and all(r.agent == "veblen" for r in rows)
    assert {c.call_id for c in records if c.kind == SUMMARY} == metered
    # the last step sent the opening as it was, a summary, and the latest turns verbatim
    last = steps[-1].messages
    assert last[0].content and "note_append" in last[0].content  # the agent was told
    assert last[1].content == "Read the whole book, then say what it argues."
    assert any("[Summary of messages" in (m.content or "") for m in last)
    assert last[-1].role == "tool" and (last[-1].content or "").startswith("Chapter 30. ")
    await rt.aclose()


async def test_a_large_result_is_an_artifact_the_agent_reads_back_in_slices(
    workspace_dir: Path,
) -> None:
    book(workspace_dir, chapters=1, chars=60_000)
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[next_chapter]")
    script = [
        ScriptedProvider.tool_call("next_chapter", {}),
        lambda r: ScriptedProvider.tool_call("read_artifact", {"artifact_id": 1, "offset": 100}),
        ScriptedProvider.text("read"),
    ]
    rt, provider = runtime(workspace_dir, script)
    run_id, _ = await submit(rt, "read chapter one", "veblen")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done", run
    first, second, third = provider.requests
    assert "read_artifact" not in {t.function.name for t in first.tools or []}
    assert "read_artifact" in {t.function.name for t in second.tools or []}  # offered now
    head = second.messages[-1].content or ""
    assert len(head) <= rt.settings.limits.tool_output_chars
    at = len(head.split("\n[... ", 1)[0])
    assert head.endswith(f"read_artifact(artifact_id=1, offset={at}) reads on]")
    whole = rt.store.read_sync(lambda c: c.execute(select(artifacts.c.content)).scalar_one())
    assert len(whole) > 60_000 - 200 and whole.startswith("Chapter 1.")
    piece = third.messages[-1].content or ""
    assert piece.startswith("[artifact 1 (next_chapter): characters 100-4,100 of")
    assert piece.split("\n", 1)[1] == whole[100:4100]
    await rt.aclose()


async def test_a_resumed_task_uses_its_summary_and_does_not_summarise_again(
    workspace_dir: Path,
) -> None:
    """Killed after a summary's transaction (summary + ledger row), before the next step:
    the task resumes from the record, with no second summary call. (Short results: nothing
    to mask, so the window is made by a summary.)"""
    book(workspace_dir, 12, chars=150)
    small_window(workspace_dir, 1024)

    class Killed(BaseException):
        pass

    script = reader(12)
    summarised = [0]

    def dying(request: ChatRequest) -> StepLike:
        if is_summary_request(request):
            summarised[0] += 1
        elif summarised[0]:
            raise Killed  # the worker dies here, after the summary was recorded
        return script(request)

    rt, provider = runtime(workspace_dir, dying)
    run_id, task_id = await submit(rt, "Read the book.", "veblen")
    with pytest.raises(BaseExceptionGroup):
        await work(rt)
    await rt.aclose()
    assert summarised[0] == 1
    store = Store.open(load_workspace(workspace_dir).database_url())
    [record] = [c for c in store.read_sync(load_compactions, task_id) if c.kind == SUMMARY]
    store.write_sync(lambda c: c.execute(update(tasks).values(lease_expires_at=0.0)))
    assert store.write_sync(queue.reap_expired) == 1
    store.close()

    rt, provider = runtime(workspace_dir, script)
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done", run
    assert not is_summary_request(provider.requests[0])  # not summarised again
    first = provider.requests[0].messages
    assert any(record.summary in (m.content or "") for m in first)
    summaries = [c for c in rt.store.read_sync(load_compactions, task_id) if c.kind == SUMMARY]
    assert summaries[0] == record and len({(c.first_seq, c.last_seq) for c in summaries}) == len(
        summaries
    )
    await rt.aclose()


def test_overflow_errors_are_read_from_the_error_body_only() -> None:
    def error(status: int, body: Any) -> ProviderError:
        return ProviderError(
            "refused", provider="p", model="m", status=status, body=json.dumps(body)
        )

    limit = "This model's maximum context length is 8192 tokens."
    openai = {"error": {"message": limit, "type": "invalid_request_error",
                        "code": "context_length_exceeded"}}  # fmt: skip
    found = overflow(error(400, openai))
    assert found is not None and found.window == 8192
    llama = {"error": {"code": 400, "type": "exceed_context_size_error",
                       "n_prompt_tokens": 5000, "n_ctx": 4096, "message": "too long"}}  # fmt: skip
    found = overflow(error(400, llama))
    assert found is not None and (found.window, found.prompt) == (4096, 5000)
    said = "This model's maximum context length is 2048 tokens. However, you requested 3000"
    vllm = {"object": "error", "type": "BadRequestError", "code": 400, "message": said}
    found = overflow(error(400, vllm))
    assert found is not None and found.window == 2048
    # a conversation about context lengths is not an overflow, nor is a server error
    assert overflow(error(500, openai)) is None
    assert overflow(error(400, {"error": {"message": "bad tool schema"}})) is None
    assert overflow(RuntimeError("maximum context length is 10 tokens")) is None


FAKE_CONFIG = """
default_model = "book"
[providers.fake]
base_url = "{url}"
max_retries = 0
[models.book]
provider = "fake"
id = "fake-model"
max_tokens = 64
context_window = 100000
price_input = 1.0
price_output = 2.0
[limits]
loop_repeats = 100
[worker]
retry_backoff_s = 0
"""


@pytest.mark.parametrize("style", ["openai", "llamacpp", "vllm"])
async def test_an_overflow_in_each_servers_shape_is_recovered_and_remembered(
    workspace_dir: Path, style: str
) -> None:
    """The config says 100,000 tokens; the server holds 6,000 and refuses longer prompts in
    its own shape. The task compacts to what the error revealed and reads the whole book."""
    server_config = FakeConfig(tool_calls="always", context_window=6000, overflow_style=style)
    async with FakeServer(server_config) as server:
        (workspace_dir / "config/harness.toml").write_text(FAKE_CONFIG.format(url=server.base_url))
        book(workspace_dir, 30)
        ws = load_workspace(workspace_dir)
        rt = build_runtime(
            ws, provider=OpenAIProvider(ws.settings), store=Store.open(ws.database_url())
        )
        run_id, task_id = await submit(rt, "Read the whole book.", "veblen")
        await work(rt)
        stats = server.stats()
        run = await rt.store.read(views.get_run, run_id)
        stored = await rt.store.read(load_model_stats)
        await rt.aclose()
    assert run is not None and run["status"] == "done", run
    assert stats["refused"] == 1  # one overflow; after it, every prompt fit
    assert stored["book"][4] == 6000  # the window learned is kept for the next worker
    assert rt.calibration.window("book") == 6000
    transcript = views.transcript  # the compactions are marked in the transcript
    items = Store.open(ws.database_url()).read_sync(transcript, task_id)
    assert any(i["role"] == "compaction" for i in items)
    assert sum(1 for i in items if i["role"] == "tool") == 31  # all 30 chapters, and the end


async def test_a_delegated_result_is_capped_like_a_tool_result(workspace_dir: Path) -> None:
    set_front_matter(workspace_dir / "agents/arnold.md", "min_delegations", "1")
    long_answer = "veblen found " + "x" * 40_000

    def script(request: ChatRequest) -> StepLike:
        system = request.messages[0].content or ""
        if "R. Veblen" in system:
            return ScriptedProvider.text(long_answer)
        if any(m.role == "tool" for m in request.messages):
            return ScriptedProvider.text("brief")
        return ScriptedProvider.tool_call("delegate", {"agent": "veblen", "task": "research"})

    rt, provider = runtime(workspace_dir, script)
    run_id, _ = await submit(rt, "a goal")
    await work(rt)
    run = await rt.store.read(views.get_run, run_id)
    assert run is not None and run["status"] == "done", run
    last = provider.requests[-1].messages[-1]
    assert last.role == "tool" and len(last.content or "") <= rt.settings.limits.tool_output_chars
    assert "read_artifact(artifact_id=" in (last.content or "")
    whole = rt.store.read_sync(lambda c: c.execute(select(artifacts.c.content)).scalar_one())
    assert whole == long_answer  # the whole result stays available
    await rt.aclose()


async def test_max_tool_calls_and_max_task_tokens_end_a_task_with_their_own_reasons(
    workspace_dir: Path,
) -> None:
    book(workspace_dir, 30)
    no_loop_limit(workspace_dir)
    set_front_matter(workspace_dir / "agents/veblen.md", "max_tool_calls", "3")
    set_front_matter(workspace_dir / "agents/simmons.md", "max_task_tokens", "2000")
    set_front_matter(workspace_dir / "agents/simmons.md", "tools", "[next_chapter]")
    set_front_matter(workspace_dir / "agents/simmons.md", "daily_token_budget", "10000000")
    rt, _ = runtime(workspace_dir, lambda r: ScriptedProvider.tool_call("next_chapter", {}))
    _, calls_task = await submit(rt, "read", "veblen")
    _, tokens_task = await submit(rt, "read", "simmons")
    await work(rt)
    by_calls = rt.store.read_sync(queue.get_task, calls_task)
    by_tokens = rt.store.read_sync(queue.get_task, tokens_task)
    assert by_calls is not None and by_calls.status == TaskStatus.FAILED
    assert "more than max_tool_calls=3" in (by_calls.error or "")
    assert by_tokens is not None and by_tokens.status == TaskStatus.FAILED
    assert "more than max_task_tokens=2,000" in (by_tokens.error or "")
    await rt.aclose()


async def test_show_marks_compactions_and_as_sent_shows_what_the_model_received(
    workspace_dir: Path,
) -> None:
    book(workspace_dir, 12)
    small_window(workspace_dir, 6000)
    rt, provider = runtime(workspace_dir, reader(12))
    run_id, task_id = await submit(rt, "Read the book.", "veblen")
    await work(rt)
    await rt.aclose()
    last_sent = provider.requests[-1].messages
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["--workspace", str(workspace_dir), *args])

    whole = cli("show", str(run_id), "--task", str(task_id), "--json")
    assert whole.exit_code == 0, whole.output
    items = json.loads(whole.output)
    marks = [i for i in items if i["role"] == "compaction"]
    assert marks and all(m["kind"] in (MASK, SUMMARY) for m in marks)
    assert any("masked_as" in i for i in items)
    assert sum(1 for i in items if i["role"] == "tool") == 12  # the whole transcript is kept
    sent = cli("show", str(run_id), "--task", str(task_id), "--as-sent", "--json")
    assert sent.exit_code == 0, sent.output
    view = json.loads(sent.output)
    # what the next request would send is what the last one sent, plus the answer
    assert [m["content"] for m in view[: len(last_sent)]] == [m.content for m in last_sent]
    assert view[-1]["role"] == "assistant" and len(view) < len(items)
    shown = runner.invoke(
        app,
        ["--workspace", str(workspace_dir), "show", str(run_id), "--task", str(task_id)],
        env={"COLUMNS": "200"},
    )
    assert shown.exit_code == 0 and "context compacted" in shown.output
    assert "masked in what is sent" in shown.output
    no_task = cli("show", str(run_id), "--as-sent")
    assert no_task.exit_code != 0 and "--task" in no_task.output


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server on the bundled model with a deliberately small window (2048)."""
    from anyio.from_thread import start_blocking_portal

    from harness.provider.local import LocalServer
    from tests.llm_fixtures import free_port, llm_settings

    settings = llm_settings(f"http://127.0.0.1:{free_port()}/v1")
    local = settings.local.model_copy(update={"n_ctx": 2048})
    settings = settings.model_copy(update={"local": local})
    log_path = tmp_path_factory.mktemp("llama-2k") / "server.log"
    with start_blocking_portal() as portal:
        server = LocalServer(settings, port=local.port, log_path=log_path)
        portal.call(server.start)
        try:
            yield server.base_url
        finally:
            portal.call(server.stop)


@pytest.mark.llm
async def test_the_real_local_model_runs_a_30_step_tool_task_in_a_2048_token_window(
    workspace_dir: Path, small_llama: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_PROVIDERS__LOCAL__BASE_URL", small_llama)
    monkeypatch.setenv("HARNESS_LOCAL__AUTOSTART", "false")
    monkeypatch.setenv("HARNESS_LOCAL__N_CTX", "2048")
    book(workspace_dir, 30, chars=600)
    no_loop_limit(workspace_dir)
    set_front_matter(workspace_dir / "agents/veblen.md", "tools", "[next_chapter]")
    set_front_matter(workspace_dir / "agents/veblen.md", "tool_choice", "required")
    set_front_matter(workspace_dir / "agents/veblen.md", "max_steps", "31")
    ws = load_workspace(workspace_dir)
    rt = build_runtime(
        ws, provider=OpenAIProvider(ws.settings), store=Store.open(ws.database_url())
    )
    assert rt.settings.models["local"].context_window == 2048
    run_id, task_id = await submit(rt, "Read the book chapter by chapter.", "veblen")
    await work(rt, concurrency=1)
    run = await rt.store.read(views.get_run, run_id)
    rows = await rt.store.read(
        lambda c: c.execute(select(calls).order_by(calls.c.id)).mappings().all()
    )
    records = await rt.store.read(load_compactions, task_id)
    items = await rt.store.read(views.transcript, task_id)
    await rt.aclose()
    assert run is not None and run["status"] == "done", run
    steps = [r for r in rows if r["kind"] != COMPACTION]
    assert len(steps) == 31 and all(r["outcome"] == "ok" for r in rows)
    assert sum(1 for i in items if i["role"] == "tool") == 30  # every chapter read
    assert records  # the window was made by compacting
    for r in rows:  # the server's own counts: every call fit its 2048-token window
        assert r["prompt_tokens"] + r["completion_tokens"] <= 2048, dict(r)
