"""B13: how well harness's prompt estimates follow a server that counts tokens more densely
than the heuristic: reported / estimated per call, before calibration (the heuristic alone)
and as harness sends it (calibrated per model, and the previous prompt's reported count plus
the new messages' estimate)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from harness.provider.tokens import estimate_prompt_tokens

from .b10_long import AGENT, workspace
from .common import FakeServerProcess, Section, Sizes, log, percentile, verdict


class Pairs:
    """(harness's estimate, the heuristic's, the server's count, whether the model had
    answered a call before this one was made) of every answered call, in call order."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[int, int, int, bool]] = {}
        self.done: dict[int, tuple[int, int, int, bool]] = {}
        self.chars: dict[int, int] = {}
        self._n = 0
        self._answered = False

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        task = data.get("task_id", -1)
        if event == "model_call":
            request = data["request"]
            raw = estimate_prompt_tokens(request)
            self.pending[task] = (request.prompt_estimate or raw, raw, self._n, self._answered)
            self.chars[self._n] = _chars_over_4(request)
            self._n += 1
        elif event == "model_done" and task in self.pending:
            estimate, raw, n, warm = self.pending.pop(task)
            self.done[n] = (estimate, raw, data["usage"].prompt_tokens, warm)
            self._answered = True

    def rows(self) -> list[tuple[int, int, int, bool]]:
        return [self.done[n] for n in sorted(self.done)]

    @property
    def plain(self) -> list[int]:
        """The chars / 4 estimate of each answered call (in the order of :meth:`rows`)."""
        return [self.chars[n] for n in sorted(self.done)]


def _chars_over_4(request: Any) -> int:
    """The plain heuristic: every 4 characters of the request's text a token."""
    texts = [m.model_dump_json(exclude_none=True) for m in request.messages]
    texts += [t.model_dump_json() for t in request.tools or []]
    return sum(-(-len(t) // 4) for t in texts)


async def run(sizes: Sizes, server: FakeServerProcess) -> Section:
    from harness.runtime import build_runtime
    from harness.store import Store, queue
    from harness.worker import Worker

    server.reset(
        ttft_s=0.0, token_delay_s=0.0, completion_tokens=16, tool_calls="always",
        context_window=0, tokenizer="dense",
    )  # fmt: skip
    pairs = Pairs()
    with tempfile.TemporaryDirectory(prefix="harness-b13-") as tmp:
        ws = workspace(Path(tmp) / "ws", server.base_url, steps=sizes.b13_steps)
        rt = build_runtime(ws, store=Store.open(ws.database_url()), on_event=pairs)
        try:
            for i in range(sizes.b13_tasks):
                await rt.store.write(
                    queue.create_run, f"Read the dossier, part {i}.", AGENT, max_attempts=1
                )
            log(f"B13: {sizes.b13_tasks} tasks of {sizes.b13_steps} steps, dense tokenizer")
            await Worker(rt, 4, until_idle=True, handle_signals=False).run()
        finally:
            server.reset(tokenizer="bytes")
            await rt.aclose()
    rows = pairs.rows()
    plain = [reported / chars for chars, (_, _, reported, _) in zip(pairs.plain, rows, strict=True)]
    before = [reported / raw for _, raw, reported, _ in rows]
    after = [reported / estimate for estimate, _, reported, warm in rows if warm]
    waste = [estimate / reported for estimate, _, reported, warm in rows if warm]
    s = Section(
        "B13",
        "prompt estimates against a denser tokenizer",
        f"{sizes.b13_tasks} tasks of {sizes.b13_steps} steps, 4 at a time, on one model; each "
        "step calls a tool returning ~1,200 characters of prose, JSON, links or a numeric "
        "table (each task starts at a different kind). The fake server counts prompts with a "
        "denser tokenizer than harness's heuristic (each digit and punctuation mark a token, "
        "letters in threes). Per answered call: the server's count / the estimate. Before: "
        "the heuristic alone (`estimate_prompt_tokens`). After: the estimate harness "
        "reserves and paces with (`ChatRequest.prompt_estimate`), for every call made after the "
        "model answered its first (the 4 calls that start together precede it). Above 1 the "
        "estimate was short.",
    )
    s.add(
        "one token per 4 characters: reported / estimated, p50 and p99",
        f"{percentile(plain, 50):.2f} / {percentile(plain, 99):.2f}",
        context="the heuristic before digits and punctuation counted as tokens",
    )
    s.add(
        "before calibration: reported / estimated, p50 and p99",
        f"{percentile(before, 50):.2f} / {percentile(before, 99):.2f}",
        context=f"{len(before)} calls",
    )
    p99 = percentile(after, 99)
    s.add(
        "harness's estimate after the first call: p99",
        f"{p99:.3f}",
        "<= 1.10",
        verdict(p99 <= 1.10),
        f"p50 {percentile(after, 50):.3f}; max {max(after):.3f}",
    )
    s.add(
        "over-estimate (estimated / reported) after the first call: p50",
        f"{percentile(waste, 50):.2f}",
        context=f"p99 {percentile(waste, 99):.2f}: reserved but not used, given back at settling",
    )
    return s
