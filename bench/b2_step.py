"""B2: one durable agent step (claim, call, persist message + ledger row, complete) against
the same statements written by hand with raw aiohttp + sqlite3."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from .common import (
    FakeServerProcess,
    Section,
    Sizes,
    diffs,
    interleave_sliced,
    log,
    make_workspace,
    metric,
    percentile,
    ratios,
    verdict,
)

AGENT = "veblen"  # offered no tools: the request goes out as the loop builds it
GOAL = "Which books explain why LLM decode is memory-bound? Two lines."
LEASE_S = 60.0


def _enqueue(db_url: str, n: int) -> None:
    from harness.store import Store, queue

    st = Store.open(db_url)
    try:
        st.write_sync(
            lambda conn: [queue.create_run(conn, GOAL, AGENT, max_attempts=3) for _ in range(n)]
        )
    finally:
        st.close()


def _first_payload(rt: Any) -> dict[str, Any]:
    """The body harness sends for the first step of a fresh ``AGENT`` task."""
    from harness.messages import ChatMessage, ChatRequest

    settings, agent = rt.settings, rt.team[AGENT]
    model = agent.model_name(settings)
    request = ChatRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content=agent.prompt),
            ChatMessage(role="user", content=GOAL),
        ],
        tools=rt.tools.specs(sorted(agent.tools)) or None,
        tool_choice="auto",
        max_tokens=agent.max_tokens or settings.models[model].max_tokens,
        temperature=agent.temperature,
    )
    return request.payload(settings.models[model].id, stream=False)


class HarnessStep:
    """The real thing, as the worker does it: ``steps.claim`` through the Store (the task
    and its state in one transaction), then ``TaskRunner.run``."""

    def __init__(self, rt: Any) -> None:
        from harness.store import workers

        self.rt = rt
        self.worker_id = rt.store.write_sync(workers.register_worker, 1)

    async def step(self) -> None:
        from harness.loop import TaskRunner
        from harness.steps import claim
        from harness.store.schema import TaskStatus

        [(task, state)] = await self.rt.store.write(claim, self.worker_id, LEASE_S, 1)
        status = await TaskRunner(self.rt, task, self.worker_id, state).run()
        assert status == TaskStatus.DONE, status


class RawStep:
    """The same transactions and statements, by hand: sqlite3 on the event loop's thread and
    one aiohttp session. Budget checks, roll-ups and guarded updates are all kept."""

    def __init__(self, path: Path, url: str, payload: dict[str, Any], budget: int) -> None:
        self.url = url + "/chat/completions"
        self.payload = payload
        self.system = payload["messages"][0]["content"]
        self.budget = budget
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        now = time.time()
        self.db.execute(
            "INSERT INTO workers (host, pid, started_at, heartbeat_at, concurrency) "
            "VALUES ('bench', 0, ?, ?, 1)",
            (now, now),
        )
        self.worker_id = self.db.execute("SELECT max(id) FROM workers").fetchone()[0]
        self.session: aiohttp.ClientSession | None = None

    def _tx(self, fn: Any, *args: Any) -> Any:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(*args)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return out

    def _claim(self) -> tuple[int, int]:
        now = time.time()
        row = self.db.execute(
            "UPDATE tasks SET status='running', lease_owner=?, lease_expires_at=?, "
            "attempts=attempts+1, started_at=coalesce(started_at, ?), updated_at=?, "
            "status_reason=NULL WHERE id IN (SELECT id FROM tasks WHERE status='queued' "
            "AND not_before<=? ORDER BY priority DESC, id LIMIT 1) RETURNING id, run_id",
            (self.worker_id, now + LEASE_S, now, now, now),
        ).fetchone()
        return int(row[0]), int(row[1])

    def _touch(self, task_id: int, steps: int) -> None:
        cur = self.db.execute(
            "UPDATE tasks SET updated_at=?, steps=steps+? WHERE id=? AND status='running' "
            "AND lease_owner=?",
            (time.time(), steps, task_id, self.worker_id),
        )
        assert cur.rowcount == 1

    def _messages(self, task_id: int, rows: list[tuple[Any, ...]], call_id: int | None) -> None:
        last = self.db.execute("SELECT max(seq) FROM messages WHERE task_id=?", (task_id,))
        seq = last.fetchone()[0]
        seq = -1 if seq is None else seq
        now = time.time()
        self.db.executemany(
            "INSERT INTO messages (task_id, seq, role, content, tool_calls, tool_call_id, "
            "name, call_id, created_at) VALUES (?, ?, ?, ?, NULL, NULL, NULL, ?, ?)",
            [
                (task_id, seq + 1 + i, role, content, call_id, now)
                for i, (role, content) in enumerate(rows)
            ],
        )

    def _open(self, task_id: int) -> None:
        self._touch(task_id, 0)
        self._messages(task_id, [("system", self.system), ("user", GOAL)], None)

    def _ensure(self, day: str) -> None:
        self.db.executemany(
            "INSERT INTO usage_daily (day, agent, calls, prompt_tokens, cached_tokens, "
            "completion_tokens, reasoning_tokens, cost_usd, estimated_calls, unsettled_calls, "
            "error_calls, reserved_tokens, reserved_cost) VALUES (?, ?, 0, 0, 0, 0, 0, 0, 0, 0, "
            "0, 0, 0) ON CONFLICT DO NOTHING",
            [(day, AGENT), (day, "*")],
        )

    def _reserve(self, task_id: int, run_id: int, day: str, tokens: int) -> int:
        self._ensure(day)
        cur = self.db.execute(
            "UPDATE usage_daily SET reserved_tokens=reserved_tokens+?, reserved_cost="
            "reserved_cost+0 WHERE day=? AND agent=? AND prompt_tokens+completion_tokens+"
            "reserved_tokens+? <= ?",
            (tokens, day, AGENT, tokens, self.budget),
        )
        assert cur.rowcount == 1
        self.db.execute(
            "UPDATE usage_daily SET reserved_tokens=reserved_tokens+?, reserved_cost="
            "reserved_cost+0 WHERE day=? AND agent='*'",
            (tokens, day),
        )
        cur = self.db.execute(
            "INSERT INTO reservations (day, agent, run_id, task_id, worker_id, model, "
            "provider, tokens, cost, created_at) VALUES (?, ?, ?, ?, ?, 'local', 'local', ?, "
            "0, ?)",
            (day, AGENT, run_id, task_id, self.worker_id, tokens, time.time()),
        )
        return int(cur.lastrowid or 0)

    def _persist(
        self, task_id: int, run_id: int, rid: int, data: dict[str, Any], latency_ms: float
    ) -> None:
        day, tokens = self.db.execute(
            "DELETE FROM reservations WHERE id=? RETURNING day, tokens", (rid,)
        ).fetchone()
        for who in (AGENT, "*"):
            self.db.execute(
                "UPDATE usage_daily SET reserved_tokens=reserved_tokens-?, reserved_cost="
                "reserved_cost-0 WHERE day=? AND agent=?",
                (tokens, day, who),
            )
        self._ensure(day)
        usage = data.get("usage") or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cur = self.db.execute(
            "INSERT INTO calls (ts, day, run_id, task_id, agent, provider, model, "
            "prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_usd, "
            "latency_ms, ttft_ms, attempt, http_status, estimated, outcome, error) VALUES "
            "(?, ?, ?, ?, ?, 'local', 'local', ?, 0, ?, 0, 0, ?, NULL, 1, 200, 0, 'ok', NULL)",
            (time.time(), day, run_id, task_id, AGENT, p, c, latency_ms),
        )
        call_id = cur.lastrowid
        self.db.execute(
            "UPDATE usage_daily SET calls=calls+1, prompt_tokens=prompt_tokens+?, "
            "completion_tokens=completion_tokens+? WHERE day=? AND agent IN (?, '*')",
            (p, c, day, AGENT),
        )
        self.db.execute(
            "UPDATE runs SET calls=calls+1, prompt_tokens=prompt_tokens+?, "
            "completion_tokens=completion_tokens+? WHERE id=?",
            (p, c, run_id),
        )
        self._touch(task_id, 1)
        content = data["choices"][0]["message"].get("content")
        self._messages(task_id, [("assistant", content)], call_id)

    def _complete(self, task_id: int, result: str) -> None:
        now = time.time()
        cur = self.db.execute(
            "UPDATE tasks SET status='done', result=?, error=NULL, updated_at=?, "
            "finished_at=?, lease_owner=NULL, lease_expires_at=NULL WHERE id=? AND "
            "status='running' AND lease_owner=?",
            (result, now, now, task_id, self.worker_id),
        )
        assert cur.rowcount == 1
        self.db.execute("SELECT parent_id FROM tasks WHERE id=?", (task_id,)).fetchone()

    async def step(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        task_id, run_id = self._tx(self._claim)
        self._tx(self._open, task_id)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        tokens = 3000
        rid = self._tx(self._reserve, task_id, run_id, day, tokens)
        t0 = time.perf_counter()
        async with self.session.post(self.url, json=self.payload) as resp:
            body = await resp.read()
        assert resp.status == 200
        data = json.loads(body)
        latency_ms = (time.perf_counter() - t0) * 1000
        self._tx(self._persist, task_id, run_id, rid, data, latency_ms)
        result = data["choices"][0]["message"].get("content") or ""
        self._tx(self._complete, task_id, result)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        self.db.close()


def _arm(stepper: Any, db_url: str) -> Any:
    async def run(n: int) -> dict[str, Any]:
        _enqueue(db_url, n)  # untimed
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await stepper.step()
            times.append(time.perf_counter() - t0)
        return {"times": times}

    return run


def _stats(res: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, float]]]:
    return {
        name: [
            {
                "mean_ms": sum(r["times"]) / len(r["times"]) * 1000,
                "p50_ms": percentile(r["times"], 50) * 1000,
                "p99_ms": percentile(r["times"], 99) * 1000,
            }
            for r in rounds
        ]
        for name, rounds in res.items()
    }


SLICES = 10


async def run(sizes: Sizes, server: FakeServerProcess) -> Section:
    from harness.runtime import build_runtime
    from harness.store import Store

    server.reset(ttft_s=0.0, token_delay_s=0.0, completion_tokens=16)
    with tempfile.TemporaryDirectory(prefix="harness-b2-") as tmp:
        root = Path(tmp)
        ws, _ = make_workspace(root / "ws", server.base_url)
        h_url = f"sqlite:///{root / 'harness.db'}"
        r_path = root / "raw.db"
        Store.open(f"sqlite:///{r_path}").close()  # the same schema, migrated
        rt = build_runtime(ws, store=Store.open(h_url))
        h = HarnessStep(rt)
        raw = RawStep(r_path, server.base_url, _first_payload(rt), budget=10_000_000)
        try:
            arms = {"harness": _arm(h, h_url), "raw": _arm(raw, f"sqlite:///{r_path}")}
            log(f"B2: {sizes.b2_rounds} rounds x {sizes.b2_steps} steps")
            res = _stats(await interleave_sliced(arms, sizes.b2_rounds, sizes.b2_steps, SLICES))
        finally:
            await raw.close()
            await rt.aclose()
    s = Section(
        "B2",
        "one durable agent step",
        f"{sizes.b2_steps} one-step tasks per arm per round (enqueued beforehand, untimed), "
        f"{sizes.b2_rounds} rounds; within a round the arms take turns {SLICES} times; each arm "
        "on its own SQLite file (WAL). harness: "
        "`steps.claim` through the Store (the worker's claim: the task and its transcript in "
        "one transaction), then `TaskRunner.run` (budget reservation with the opening "
        "messages; model call; message + ledger row + roll-ups + completion in one "
        "transaction). Raw: the same statements by hand in five write "
        "transactions (claim, opening, reserve, persist, complete) with sqlite3 (on the event "
        "loop's thread) and aiohttp. The fake server answers 16 tokens at once.",
    )
    r = ratios(res, "harness", "raw", "mean_ms")
    added = diffs(res, "harness", "raw", "p50_ms")
    hm, rm = metric(res, "harness", "p50_ms"), metric(res, "raw", "p50_ms")
    s.add(
        "harness / raw (mean step time)",
        r.fmt() + "x",
        "<= 1.5x",
        verdict(r.median <= 1.5),
        f"p50 {hm.median:.2f} ms vs {rm.median:.2f} ms",
    )
    s.add("added p50 per step", added.fmt(2, " ms"), "<= 1 ms", verdict(added.median <= 1.0))
    p99 = diffs(res, "harness", "raw", "p99_ms")
    s.add("added p99 per step", p99.fmt(2, " ms"), context="")
    return s
