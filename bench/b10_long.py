"""B10: one task of hundreds of steps inside a bounded window: the harness's CPU per step at
the end vs at the start, tokens sent per step, and how much of each prompt is re-sent
unchanged as a prefix of the next one (what providers' prompt caches reuse)."""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.provider.tokens import estimate_prompt_tokens

from .common import FakeServerProcess, Section, Sizes, Spread, log, make_workspace, verdict

AGENT = "veblen"
WINDOW = 16_000  # tokens: the model's window, as the config and the server both say

# a workspace tool that returns ~1,200 characters per call, of four kinds in turn (prose,
# JSON, links, a numeric table), different on every call of a task (and tasks start apart)
SOURCES_TOOL = '''
import json

from harness import tool
from harness.tools import ToolContext

_CALLS: dict[int, int] = {}
WORDS = "inference demand memory bandwidth supply chain capital spending tokens".split()


@tool
def next_source(ctx: ToolContext) -> str:
    """Read the next source of the research dossier (call it again for the one after)."""
    n = _CALLS[ctx.task_id] = _CALLS.get(ctx.task_id, 0) + 1
    kind = (n + ctx.task_id) % 4
    if kind == 0:
        words = [WORDS[(n * 7 + i) % len(WORDS)] for i in range(170)]
        return f"Source {n}. " + " ".join(words)
    if kind == 1:
        rows = [{"id": n * 100 + i, "vendor": WORDS[i % 9], "price_usd": round(n * 1.37 + i, 2),
                 "units": n * 13 + i, "ok": i % 2 == 0} for i in range(14)]
        return json.dumps({"source": n, "rows": rows})
    if kind == 2:
        return "\\n".join(f"https://example.org/{n}/{WORDS[i % 9]}/{n * 31 + i}?ref=harness&p={i}"
                         for i in range(22))
    lines = [" | ".join(f"{(n * 17 + i * 7 + j * 3) % 1000:>4}.{j:02d}" for j in range(8))
             for i in range(16)]
    return f"Table {n}\\n" + "\\n".join(lines)
'''


def workspace(
    root: Path, base_url: str, *, steps: int, window: int | None = None, **env: str
) -> Any:
    """A workspace whose ``AGENT`` reads sources for ``steps`` steps (on a model with
    ``window`` tokens, when given: the config says so)."""
    from harness.settings import Workspace, load_settings

    # native tool calls: the fake server calls the first tool offered
    _, environ = make_workspace(root, base_url, HARNESS_MODELS__LOCAL__TOOLS="native", **env)
    (root / "tools/sources.py").write_text(SOURCES_TOOL)
    toml = root / "config/harness.toml"
    text = toml.read_text().replace("loop_repeats = 3", "loop_repeats = 1000")
    if window:
        text = text.replace(
            'id = "smollm2-135m-instruct"',
            f'id = "smollm2-135m-instruct"\ncontext_window = {window}',
        )
    toml.write_text(text)
    agent = root / f"agents/{AGENT}.md"
    head, body = agent.read_text().split("\n---\n", 1)
    keep = [ln for ln in head.splitlines() if not ln.startswith(("tools:", "max_steps:"))]
    keep += ["tools: [next_source]", f"max_steps: {steps}"]
    agent.write_text("\n".join(keep) + "\n---\n" + body)
    return Workspace(root=root, settings=load_settings(root, environ=environ))


class Probe:
    """Follows one runtime's events: CPU between model calls (its own time excluded), the
    messages of each request, the server's count of each prompt."""

    def __init__(self) -> None:
        self.cpu_at: list[float] = []
        self.sent: list[list[str]] = []
        self.prompt_tokens: list[int] = []
        self.estimates: list[tuple[int, int, str]] = []  # (harness's, raw heuristic, model)
        self.reported: list[int] = []
        self._own = 0.0

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        t0 = time.process_time()
        if event == "model_call":
            self.cpu_at.append(t0 - self._own)
            request = data["request"]
            self.sent.append([_dump(m) for m in request.messages])
            raw = estimate_prompt_tokens(request)
            self.estimates.append((request.prompt_estimate or raw, raw, request.model))
        elif event == "model_done":
            self.reported.append(data["usage"].prompt_tokens)
        self._own += time.process_time() - t0

    def cpu_per_step(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.cpu_at)]

    def prefix_shares(self) -> tuple[list[float], float, int]:
        """For the steps whose prompt starts with the previous one: the share of the step's
        bytes the previous one was, each, and over all of them; and how many steps did not
        (they follow a compaction)."""
        shares, reused, sent, breaks = [], 0, 0, 0
        for a, b in itertools.pairwise(self.sent):
            if b[: len(a)] == a:
                prev, cur = sum(map(len, a)), sum(map(len, b))
                shares.append(prev / cur)
                reused, sent = reused + prev, sent + cur
            else:
                breaks += 1
        return shares, reused / sent if sent else float("nan"), breaks


def _dump(message: Any) -> str:
    return json.dumps(message.model_dump(exclude_none=True), sort_keys=True)


async def one_task(ws: Any, steps: int) -> tuple[Probe, dict[str, Any], int]:
    """Run one ``steps``-step task; its probe, its run, and its compaction records."""
    from harness.runtime import build_runtime
    from harness.store import Store, queue, views
    from harness.store.compactions import load_compactions
    from harness.worker import Worker

    probe = Probe()
    rt = build_runtime(ws, store=Store.open(ws.database_url()))
    try:
        # a short task first, unmeasured: the first calls of a process pay one-time costs
        # (imports, connections) that are no part of a step's
        await rt.store.write(queue.create_run, "Warm up.", "bradlee", max_attempts=1)
        await Worker(rt, 1, until_idle=True, handle_signals=False).run()
        rt.on_event = probe
        run_id, task_id = await rt.store.write(
            queue.create_run, "Read every source of the dossier.", AGENT, max_attempts=1
        )
        await Worker(rt, 1, until_idle=True, handle_signals=False).run()
        run = await rt.store.read(views.get_run, run_id)
        records = await rt.store.read(load_compactions, task_id)
    finally:
        await rt.aclose()
    return probe, run or {}, len(records)


async def run(sizes: Sizes, server: FakeServerProcess) -> Section:
    steps, rounds = sizes.b10_steps, sizes.b10_rounds
    server.reset(
        ttft_s=0.0, token_delay_s=0.0, completion_tokens=16, tool_calls="always",
        context_window=WINDOW, overflow_style="llamacpp", tokenizer="bytes",
    )  # fmt: skip
    first: list[float] = []
    last: list[float] = []
    tokens: list[list[int]] = []
    shares: list[list[float]] = []
    weighted: list[float] = []
    breaks: list[int] = []
    compactions: list[int] = []
    refused: list[int] = []
    edge = max(min(10, steps // 10), 1)
    for r in range(rounds):
        with tempfile.TemporaryDirectory(prefix="harness-b10-") as tmp:
            ws = workspace(Path(tmp) / "ws", server.base_url, steps=steps, window=WINDOW)
            log(f"B10: round {r + 1}/{rounds}, one task of {steps} steps")
            server.reset()
            probe, run_data, n_compactions = await one_task(ws, steps)
            refused.append(server.stats()["refused"])
        assert run_data.get("status") == "done", run_data
        cpu = probe.cpu_per_step()
        first.append(statistics.mean(cpu[:edge]) * 1000)
        last.append(statistics.mean(cpu[-edge:]) * 1000)
        tokens.append(probe.reported)
        each, over_task, b = probe.prefix_shares()
        shares.append(each)
        weighted.append(over_task)
        breaks.append(b)
        compactions.append(n_compactions)
    ratio = Spread.of([b / a for a, b in zip(first, last, strict=True)])
    s = Section(
        "B10",
        "a long task in a bounded window",
        f"One task of {steps} steps ({rounds} rounds, a fresh workspace each): every step calls "
        "a tool that returns ~1,200 characters (prose, JSON, links, numeric tables in turn), "
        f"on a model whose window is {WINDOW:,} tokens (the config says so; the fake server "
        "counts body bytes / 4 and refuses longer prompts in llama.cpp's shape). CPU is this "
        "process's (harness's: the fake server runs in its own), between one model call and "
        f"the next, the probe's own time excluded; the first {edge} steps against the last "
        f"{edge}. Prefix reuse: the bytes of a step's messages that the previous step sent "
        "unchanged at the start, as a share of the step's, for steps that follow no "
        "compaction.",
    )
    s.add(
        f"CPU per step, last {edge} / first {edge}",
        ratio.fmt() + "x",
        "<= 1.5x",
        verdict(ratio.high <= 1.5),
        f"{Spread.of(first).fmt(2, ' ms')} first, {Spread.of(last).fmt(2, ' ms')} last",
    )
    all_shares = [x for round_shares in shares for x in round_shares]
    overall = Spread.of(weighted)
    s.add(
        "prefix re-sent unchanged, steps after no compaction (bytes, over the task)",
        overall.fmt(3),
        ">= 0.9",
        verdict(overall.low >= 0.9),
        f"per step: median {statistics.median(all_shares):.3f}, lowest {min(all_shares):.3f} "
        "(the first steps, whose prompt is still short, add most in proportion)",
    )
    s.add(
        "steps that follow a compaction (the prefix changes there)",
        Spread.of(breaks).fmt(0),
        context=f"compaction records per task: {Spread.of(compactions).fmt(0)}",
    )
    flat = [t for round_tokens in tokens for t in round_tokens]
    s.add(
        "prompt tokens per step (server's count)",
        f"p50 {statistics.median(flat):,.0f}, max {max(flat):,}",
        f"<= {WINDOW:,} (the window)",
        verdict(max(flat) <= WINDOW and not any(refused)),
        f"prompts refused as too long: {sum(refused)}",
    )
    return s
