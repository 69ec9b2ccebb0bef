"""B6: the ledger at scale (10M call rows): today's use for one agent, and the 30-day table
for all agents, against indexed raw SQL."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from .common import Section, Sizes, interleave, log, metric, percentile, verdict

AGENTS = ["arnold", "veblen", "simmons", "bradlee", "gulbenkian"] + [f"agent{i}" for i in range(7)]
DAYS = 60
CALLS_COLUMNS = (
    "ts, day, run_id, task_id, agent, provider, model, prompt_tokens, cached_tokens, "
    "completion_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, attempt, "
    "http_status, estimated, outcome, error"
)
ROLLUP = (
    "INSERT INTO usage_daily (day, agent, calls, prompt_tokens, cached_tokens, "
    "completion_tokens, reasoning_tokens, cost_usd, estimated_calls, unsettled_calls, "
    "error_calls, reserved_tokens, reserved_cost) "
    "SELECT day, agent, count(*), sum(prompt_tokens), sum(cached_tokens), "
    "sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd), sum(estimated), "
    "sum(outcome = 'unsettled'), sum(outcome = 'error'), 0, 0 FROM calls GROUP BY day, agent"
)
WORKSPACE_ROLLUP = (
    "INSERT INTO usage_daily (day, agent, calls, prompt_tokens, cached_tokens, "
    "completion_tokens, reasoning_tokens, cost_usd, estimated_calls, unsettled_calls, "
    "error_calls, reserved_tokens, reserved_cost) SELECT day, '*', sum(calls), sum(prompt_tokens), "
    "sum(cached_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd), "
    "sum(estimated_calls), sum(unsettled_calls), sum(error_calls), 0, 0 FROM usage_daily "
    "GROUP BY day"
)


def generate(path: Path, rows: int, today: date) -> float:
    """Fill a migrated database with ``rows`` call rows over ``DAYS`` days (ending today) and
    ``AGENTS``, and their daily roll-ups, in one transaction of raw SQL: the rows come from a
    recursive CTE, so SQLite generates them without a Python loop. Returns the seconds taken.
    """
    t0 = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")  # up to ~1 GB of page cache while loading
    start = today - timedelta(days=DAYS - 1)
    base_ts = time.mktime(start.timetuple())
    per_day = max(rows // DAYS, 1)
    agents = ", ".join(f"('{a}', {i})" for i, a in enumerate(AGENTS))
    db.execute("BEGIN")
    # the call table's indexes are dropped and built again afterwards (a sort each: faster
    # than maintaining five B-trees row by row), with the schema's own definitions
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='calls' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        db.execute(f'DROP INDEX "{name}"')
    db.execute("CREATE TEMP TABLE bench_agents (name TEXT, k INTEGER PRIMARY KEY)")
    db.execute(f"INSERT INTO bench_agents (name, k) VALUES {agents}")
    days = ", ".join(f"('{(start + timedelta(days=d)).isoformat()}', {d})" for d in range(DAYS))
    db.execute("CREATE TEMP TABLE bench_days (day TEXT, d INTEGER PRIMARY KEY)")
    db.execute(f"INSERT INTO bench_days (day, d) VALUES {days}")
    db.execute(
        f"""
        INSERT INTO calls ({CALLS_COLUMNS})
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?),
        r AS (SELECT i, min(i / ?, ?) AS d, 200 + (i * 7919) % 3800 AS p,
                     10 + (i * 104729) % 790 AS c FROM n)
        SELECT ? + r.d * 86400 + (i % ?) * (86400.0 / ?), bench_days.day,
               i / 40, i / 8, bench_agents.name, 'openai', 'gpt',
               p, 0, c, 0, (p * 0.4 + c * 1.6) / 1e6, 900.0, NULL, 1, 200, 0, 'ok', NULL
        FROM r JOIN bench_days ON bench_days.d = r.d JOIN bench_agents ON bench_agents.k = i % ?
        """,
        (rows - 1, per_day, DAYS - 1, base_ts, per_day, per_day, len(AGENTS)),
    )
    db.execute(ROLLUP)  # one scan of the rows, before the indexes exist
    db.execute(WORKSPACE_ROLLUP)
    for _, sql in indexes:
        db.execute(sql)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - t0


RAW_TODAY_ROLLUP = (
    "SELECT prompt_tokens + completion_tokens, cost_usd FROM usage_daily WHERE day=? AND agent=?"
)
RAW_TODAY_CALLS = (
    "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0) "
    "FROM calls WHERE day=? AND agent=?"
)
RAW_TABLE_ROLLUP = (
    "SELECT * FROM usage_daily WHERE agent != '*' AND day >= ? AND day <= ? ORDER BY day, agent"
)
RAW_TABLE_CALLS = (
    "SELECT day, agent, count(*), sum(prompt_tokens), sum(cached_tokens), "
    "sum(completion_tokens), sum(reasoning_tokens), sum(cost_usd) FROM calls "
    "WHERE day >= ? AND day <= ? GROUP BY day, agent ORDER BY day, agent"
)


def _timed(fn: Any, n: int) -> Any:
    async def run() -> dict[str, float]:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return {"p50_ms": percentile(times, 50) * 1000, "p99_ms": percentile(times, 99) * 1000}

    return run


async def run(sizes: Sizes) -> Section:
    from harness import ledger
    from harness.ledger import reads as ledger_report
    from harness.store import Store
    from harness.usage import Budget

    today = date.today()
    day, since = today.isoformat(), (today - timedelta(days=29)).isoformat()
    with tempfile.TemporaryDirectory(prefix="harness-b6-") as tmp:
        path = Path(tmp) / "ledger.db"
        Store.open(f"sqlite:///{path}").close()
        log(f"B6: generating {sizes.b6_rows:,} call rows")
        gen_s = generate(path, sizes.b6_rows, today)
        size_mb = path.stat().st_size / 2**20
        store = Store.open(f"sqlite:///{path}")
        raw = sqlite3.connect(path, isolation_level=None)
        budgets = {a: Budget(tokens=10_000_000) for a in AGENTS}
        q = sizes.b6_queries
        slow_q = max(q // 20, 3)

        def who(i: int) -> str:
            return AGENTS[i % len(AGENTS)]

        arms = {
            "harness today_use": _timed(
                lambda i: store.read_sync(ledger.today_use, who(i), day), q
            ),
            "raw roll-up row": _timed(
                lambda i: raw.execute(RAW_TODAY_ROLLUP, (day, who(i))).fetchone(), q
            ),
            "raw sum over calls": _timed(
                lambda i: raw.execute(RAW_TODAY_CALLS, (day, who(i))).fetchone(), slow_q
            ),
            "harness 30-day table": _timed(
                lambda i: store.read_sync(ledger_report.rows, budgets, since=since, until=day),
                max(q // 10, 3),
            ),
            "raw 30-day roll-up rows": _timed(
                lambda i: raw.execute(RAW_TABLE_ROLLUP, (since, day)).fetchall(), max(q // 10, 3)
            ),
            "raw 30-day group-by over calls": _timed(
                lambda i: raw.execute(RAW_TABLE_CALLS, (since, day)).fetchall(), 1
            ),
        }
        log(f"B6: {sizes.rounds} rounds of queries")
        try:
            res = await interleave(arms, sizes.rounds)
        finally:
            raw.close()
            store.close()
    s = Section(
        "B6",
        f"the ledger at {sizes.b6_rows:,} call rows",
        f"A SQLite file (migrated schema) with {sizes.b6_rows:,} call rows over {DAYS} days and "
        f"{len(AGENTS)} agents plus their daily roll-ups, generated with raw SQL (a recursive "
        f"CTE) in one transaction ({gen_s:.0f} s, {size_mb:,.0f} MiB). harness: "
        "`ledger.today_use` and "
        "`ledger_report.rows` (what `harness ledger` shows) through `Store.read_sync` (a read "
        "transaction each). Baselines: indexed raw SQL with sqlite3, on the roll-up table "
        "(the same rows harness reads) and over the call rows (what a ledger without roll-ups "
        f"would run; index on (day, agent)). {sizes.rounds} rounds, interleaved; p50/p99 per "
        "round.",
    )
    p99 = metric(res, "harness today_use", "p99_ms")
    s.add(
        "today's use, one agent: p99",
        p99.fmt(3, " ms"),
        "<= 1 ms",
        verdict(p99.median <= 1.0),
        f"raw roll-up row p99 {metric(res, 'raw roll-up row', 'p99_ms').median:.3f} ms; "
        f"raw sum over calls p99 {metric(res, 'raw sum over calls', 'p99_ms').median:.1f} ms",
    )
    table = metric(res, "harness 30-day table", "p99_ms")
    s.add(
        "30-day table, all agents: p99",
        table.fmt(2, " ms"),
        "<= 50 ms",
        verdict(table.median <= 50),
        f"raw roll-up rows p99 {metric(res, 'raw 30-day roll-up rows', 'p99_ms').median:.2f} "
        f"ms; raw group-by over calls "
        f"{metric(res, 'raw 30-day group-by over calls', 'p50_ms').median:,.0f} ms",
    )
    for arm, base in (
        ("harness today_use", "raw roll-up row"),
        ("harness 30-day table", "raw 30-day roll-up rows"),
    ):
        a, b = metric(res, arm, "p50_ms"), metric(res, base, "p50_ms")
        s.add(
            f"{arm} / {base} (p50)",
            f"{a.median / b.median:.1f}x",
            context=f"{a.median:.3f} vs {b.median:.3f} ms",
        )
    return s
