"""The morning report for a known history, built through the queue and the ledger
(on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection

from harness import clock, ledger, report
from harness.ledger import CallContext
from harness.settings import ModelConfig, ProviderConfig, Settings
from harness.store import Store, queue
from harness.store.queue import Lease, NewTask
from harness.usage import Budget, CallOutcome, CallRecord, Usage

LONDON = ZoneInfo("Europe/London")
SINCE = datetime(2024, 6, 1, 20, 0, tzinfo=LONDON).timestamp()
NOW = SINCE + 12 * 3600
SETTINGS = Settings(
    timezone="Europe/London",
    default_model="gpt",
    providers={
        "openai": ProviderConfig(base_url="https://api.example.com/v1"),
        "local": ProviderConfig(base_url="http://127.0.0.1:8765/v1"),
    },
    models={
        "gpt": ModelConfig(provider="openai", id="g", price_input=1.0, price_output=2.0),
        "local": ModelConfig(provider="local", id="l"),
    },
)
BUDGETS = {"arnold": Budget(tokens=10_000), "veblen": Budget(tokens=1_000, cost_usd=0.5)}
ANSWER = "".join(f"Finding {i}: HBM supply stays tight.\n" for i in range(60))  # 2,149 chars
W = 1  # the worker id owning every lease


class Clock:
    """The store's clock, set in minutes after SINCE."""

    def __init__(self) -> None:
        self.t = SINCE

    def at(self, minutes: float) -> float:
        self.t = SINCE + minutes * 60
        return self.t


def _ok(model: str, prompt: int, completion: int, cached: int = 0, attempt: int = 1) -> CallRecord:
    provider = "openai" if model == "gpt" else "local"
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
    return CallRecord(provider, model, CallOutcome.OK, usage, attempt=attempt)


def _claim(conn: Connection, run_id: int) -> queue.Task:
    [task] = queue.claim(conn, W, 86400, run_id=run_id)
    return task


def _call(conn: Connection, task: queue.Task, records: list[CallRecord]) -> None:
    ctx = CallContext(agent=task.agent, run_id=task.run_id, task_id=task.id)
    ledger.record(conn, ctx, records, SETTINGS)


def _run(conn: Connection, goal: str, agent: str, schedule: str | None = None) -> int:
    return queue.create_run(conn, goal, agent, max_attempts=1, schedule=schedule)[0]


def build_history(store: Store, clk: Clock) -> None:
    """Runs 1-8 (ids in order). Run 1 finished before the period and is left out."""

    def old(conn: Connection) -> None:
        clk.at(-180)
        run = _run(conn, "Yesterday's question", "arnold")
        task = _claim(conn, run)
        clk.at(-120)
        queue.complete(conn, Lease(task, W), "old answer")

    def finished(conn: Connection) -> None:
        clk.at(30)
        run = _run(conn, "Summarise the week\nin inference economics", "arnold", "nightly")
        clk.at(60)
        task = _claim(conn, run)
        clk.at(61)
        error = CallRecord("openai", "gpt", CallOutcome.ERROR, status=503, error="overloaded")
        _call(conn, task, [error, _ok("local", 1000, 200)])  # fell back to the local model
        clk.at(70)
        _call(conn, task, [_ok("gpt", 2000, 300, cached=100, attempt=2)])  # a retry
        clk.at(100)
        queue.complete(conn, Lease(task, W), ANSWER)

    def failed(conn: Connection) -> None:
        clk.at(120)
        task = _claim(conn, _run(conn, "Check HBM prices", "veblen"))
        clk.at(125)
        _call(conn, task, [_ok("gpt", 500, 50)])
        clk.at(150)
        queue.fail(conn, Lease(task, W), "provider gave up after 4 attempts")

    def paused(conn: Connection) -> None:
        clk.at(200)
        task = _claim(conn, _run(conn, "Portfolio review", "simmons"))
        clk.at(210)
        queue.pause(conn, Lease(task, W), "out of its daily token budget", NOW + 3600, "[1]")

    def waiting_on_paused_child(conn: Connection) -> None:
        clk.at(300)
        root = _claim(conn, _run(conn, "Write the newsletter", "arnold"))
        clk.at(310)
        [child_id] = queue.spawn_children(conn, Lease(root, W), [NewTask("bradlee", "draft", "c1")])
        [child] = [t for t in queue.claim(conn, W, 86400, 5) if t.id == child_id]
        clk.at(320)
        queue.pause(conn, Lease(child, W), "out of its daily token budget", NOW + 3600, "[1]")

    def running(conn: Connection) -> None:
        clk.at(400)
        _run(conn, "Idle goal", "gulbenkian")  # queued, never claimed
        clk.at(420)
        task = _claim(conn, _run(conn, "Long crawl", "bradlee"))
        clk.at(430)
        lost = CallRecord(
            "local", "local", CallOutcome.UNSETTLED, Usage(prompt_tokens=800, estimated=True)
        )
        _call(conn, task, [lost])

    def cancelled(conn: Connection) -> None:
        clk.at(500)
        run = _run(conn, "Abandoned idea", "veblen")
        clk.at(510)
        queue.cancel_run(conn, run)

    for step in (old, finished, failed, paused, waiting_on_paused_child, running, cancelled):
        store.write_sync(step)


@pytest.fixture
def history(db_url: str) -> Iterator[Store]:
    clk = Clock()
    clock.use(lambda: clk.t)
    store = Store.open(db_url)
    try:
        build_history(store, clk)
        yield store
    finally:
        clock.use(None)
        store.close()


def _sections(text: str) -> dict[str, str]:
    head, *rest = text.split("\n\n## ")
    out = {"": head}
    for part in rest:
        title, _, body = part.partition("\n\n")
        out[title] = body
    return out


@pytest.fixture
def sections(history: Store) -> dict[str, str]:
    text = history.read_sync(report.build_report, SETTINGS, SINCE, NOW, BUDGETS)
    assert text.endswith("\n") and not text.endswith("\n\n")
    return _sections(text.rstrip("\n"))


def test_header_names_period_zone_and_totals(sections: dict[str, str]) -> None:
    assert sections[""] == (
        "# Morning report\n\n"
        "Period: 2024-06-01 20:00 to 2024-06-02 08:00 (Europe/London)\n\n"
        "Runs: 1 finished, 2 failed or cancelled, 2 paused, 2 still running.\n"
        "Model calls: 5, 4,850 tokens, $0.0032."
    )


def test_finished_run_shows_its_answer_trimmed_at_a_line(sections: dict[str, str]) -> None:
    kept = "".join(f"> Finding {i}: HBM supply stays tight.\n" for i in range(41))
    assert sections["Finished (1)"] == (
        "### Run 2: Summarise the week in inference economics\n\n"
        "agent arnold · done 2024-06-01 21:40 · took 40m 00s · 3,500 tokens · $0.0026"
        " · schedule nightly\n\n" + kept + "> … (trimmed: 2,149 characters in all)"
    )


def test_failed_cancelled_paused_and_running_runs(sections: dict[str, str]) -> None:
    assert sections["Failed or cancelled (2)"] == (
        "### Run 3: Check HBM prices\n\n"
        "agent veblen · failed 2024-06-01 22:30 · took 30m 00s · 550 tokens · $0.0006\n\n"
        "Error:\n\n"
        "> provider gave up after 4 attempts\n\n"
        "### Run 8: Abandoned idea\n\n"
        "agent veblen · cancelled 2024-06-02 04:30 · 0 tokens · $0.0000\n\n"
        "Why: cancelled by user"
    )
    assert sections["Paused (2)"] == (
        "### Run 4: Portfolio review\n\n"
        "agent simmons · paused · 0 tokens · $0.0000\n\n"
        "Why: out of its daily token budget\n\n"
        "### Run 5: Write the newsletter\n\n"
        "agent arnold · waiting · 0 tokens · $0.0000\n\n"
        "Why: task 6 (bradlee) is paused: out of its daily token budget"
    )
    assert sections["Still running (2)"] == (
        "### Run 6: Idle goal\n\n"
        "agent gulbenkian · queued · 0 tokens · $0.0000\n\n"
        "### Run 7: Long crawl\n\n"
        "agent bradlee · running · 800 tokens · $0.0000"
    )
    assert "Yesterday" not in "".join(sections.values())  # finished before the period


def test_tokens_and_cost_per_agent_against_budgets(sections: dict[str, str]) -> None:
    assert sections["Tokens and cost by agent"] == (
        "Budgets are daily; this period touches 2 days (2024-06-01 to 2024-06-02),"
        " so each daily budget counts 2 times.\n\n"
        "| agent | calls | input | cached | output | total | cost | tokens of budget"
        " | cost of budget |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| arnold | 3 | 3,000 | 100 | 500 | 3,500 | $0.0026 | 17.5% of 20,000 | - |\n"
        "| bradlee | 1 | 800 | 0 | 0 | 800 | $0.0000 | - | - |\n"
        "| veblen | 1 | 500 | 0 | 50 | 550 | $0.0006 | 27.5% of 2,000 | 0.1% of $1.0000 |\n"
        "| **all** | 5 | 4,300 | 100 | 550 | 4,850 | $0.0032 |  |  |"
    )


def test_retries_fallbacks_and_unsettled_calls(sections: dict[str, str]) -> None:
    assert sections["Retries and fallbacks"] == (
        "- Failed attempts (the server answered with an error): 1\n"
        "- Attempts after a retry (attempt 2 or later): 1\n"
        "- Fallbacks (answered by another model than the one tried first): 1\n"
        "- Unsettled calls (in flight when their worker died): 1\n\n"
        "Failed attempts:\n\n"
        "- 2024-06-01 21:01 task 2 (arnold) gpt, attempt 1, HTTP 503: overloaded\n\n"
        "Fallbacks:\n\n"
        "- 2024-06-01 21:01 task 2 (arnold): gpt -> local"
    )


def test_slowest_and_most_expensive_tasks(sections: dict[str, str]) -> None:
    assert sections["Slowest tasks"] == (
        "| task | run | agent | status | took |\n"
        "| --- | --- | --- | --- | ---: |\n"
        "| 2 | 2 | arnold | done | 40m 00s |\n"
        "| 3 | 3 | veblen | failed | 30m 00s |"
    )
    assert sections["Most expensive tasks"] == (
        "| task | run | agent | calls | tokens | cost |\n"
        "| --- | --- | --- | ---: | ---: | ---: |\n"
        "| 2 | 2 | arnold | 3 | 3,500 | $0.0026 |\n"
        "| 3 | 3 | veblen | 1 | 550 | $0.0006 |\n"
        "| 8 | 7 | bradlee | 1 | 800 | $0.0000 |"
    )


def test_a_quiet_period_says_so(history: Store) -> None:
    since = NOW + 3600  # after everything: only the unfinished runs remain
    text = history.read_sync(report.build_report, SETTINGS, since, since + 3600)
    got = _sections(text.rstrip("\n"))
    assert got["Finished (0)"] == got["Failed or cancelled (0)"] == "None."
    assert got["Tokens and cost by agent"] == "No model calls in this period."
    assert got["Retries and fallbacks"] == (
        "No failed attempts, retries, fallbacks or unsettled calls."
    )
    assert got["Slowest tasks"] == "No tasks finished in this period."
    assert got["Most expensive tasks"] == "No model calls in this period."
    assert "Paused (2)" in got and "Still running (2)" in got
