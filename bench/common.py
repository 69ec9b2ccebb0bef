"""Shared machinery: the fake server as a subprocess, interleaved rounds, statistics, results.

Method (issue 7): every figure is a ratio against a baseline doing the same work in the same
run. Arms run interleaved, one after the other inside each round, their order rotated from
round to round; a round gives one ratio per arm, and the report is the median of the rounds'
ratios with their spread (min..max). Absolute figures are context only.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


# -- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does: ``full`` for ``make bench``, ``quick``, ``tiny``."""

    name: str
    rounds: int
    b1_calls: int  # sequential calls per arm per round
    b2_steps: int  # agent steps per arm per round
    b2_rounds: int  # B2's own: its ratio is a small difference on a noisy machine
    b3_levels: tuple[int, ...]
    b3_calls_per_slot: int  # calls per concurrent slot per arm per round
    b4_calls: int  # calls per arm per round
    b4_concurrency: int
    b5_tasks: int  # one-at-a-time tasks per arm per round
    b5_batch: int  # batch size (one batch of this many tasks per transaction)
    b5_batches: int
    b6_rows: int
    b6_queries: int
    b7_tasks: int
    b7_rounds: int
    b8_in_flight: int
    b8_cli_runs: int
    b9_runs: int  # one-call runs per arm per round
    b9_delegated: int  # delegated runs (a chief + 4 children) per arm per round
    b9_concurrency: tuple[int, ...]
    b9_rounds: int
    b10_steps: int  # steps of B10's one long task
    b10_rounds: int
    b12_rounds: int  # B12: `harness run` processes per arm (each a few seconds)
    b11_runs: int  # one-call runs of B11's backlog, per arm per round
    b11_workers: tuple[int, ...]  # worker processes sharing B11's 64 slots
    b11_rounds: int
    b11_stream_s: float  # how long runs are submitted to idle workers (claim latency)
    b11_claimers: tuple[int, ...]  # concurrent claimers of the database side
    b11_claim_s: float
    b11_queued: int  # tasks queued before each level of claimers
    b13_tasks: int  # tasks of B13 (each its own mix of results)
    b13_steps: int
    soak_minutes: float  # B14 (run only when named: ``make soak``)
    ceiling_calls: int


FULL = Sizes(
    name="full",
    rounds=7,
    b1_calls=400,
    b2_steps=150,
    b2_rounds=15,
    b3_levels=(1, 16, 64, 256),
    b3_calls_per_slot=12,
    b4_calls=1024,
    b4_concurrency=64,
    b5_tasks=300,
    b5_batch=100,
    b5_batches=3,
    b6_rows=10_000_000,
    b6_queries=2000,
    b7_tasks=10_000,
    b7_rounds=5,
    b8_in_flight=256,
    b8_cli_runs=15,
    b9_runs=3000,
    b9_delegated=500,
    b9_concurrency=(64, 256),
    b9_rounds=3,
    b10_steps=200,
    b10_rounds=3,
    b12_rounds=7,
    b11_runs=2000,
    b11_workers=(1, 2, 4),
    b11_rounds=3,
    b11_stream_s=8.0,
    b11_claimers=(1, 4, 16, 64),
    b11_claim_s=3.0,
    b11_queued=20_000,
    b13_tasks=24,
    b13_steps=12,
    soak_minutes=60,
    ceiling_calls=6000,
)
QUICK = Sizes(
    name="quick",
    rounds=3,
    b1_calls=60,
    b2_steps=25,
    b2_rounds=3,
    b3_levels=(1, 16, 64),
    b3_calls_per_slot=3,
    b4_calls=128,
    b4_concurrency=32,
    b5_tasks=60,
    b5_batch=30,
    b5_batches=2,
    b6_rows=100_000,
    b6_queries=200,
    b7_tasks=1000,
    b7_rounds=1,
    b8_in_flight=32,
    b8_cli_runs=3,
    b9_runs=600,
    b9_delegated=100,
    b9_concurrency=(64,),
    b9_rounds=1,
    b10_steps=60,
    b10_rounds=1,
    b12_rounds=3,
    b11_runs=400,
    b11_workers=(1, 2, 4),
    b11_rounds=1,
    b11_stream_s=2.0,
    b11_claimers=(1, 4, 16, 64),
    b11_claim_s=0.8,
    b11_queued=5000,
    b13_tasks=8,
    b13_steps=8,
    soak_minutes=2,
    ceiling_calls=600,
)
TINY = Sizes(
    name="tiny",
    rounds=2,
    b1_calls=3,
    b2_steps=3,
    b2_rounds=2,
    b3_levels=(1, 4),
    b3_calls_per_slot=2,
    b4_calls=8,
    b4_concurrency=4,
    b5_tasks=5,
    b5_batch=4,
    b5_batches=2,
    b6_rows=2000,
    b6_queries=5,
    b7_tasks=20,
    b7_rounds=1,
    b8_in_flight=4,
    b8_cli_runs=1,
    b9_runs=24,
    b9_delegated=4,
    b9_concurrency=(8,),
    b9_rounds=1,
    b10_steps=12,
    b10_rounds=1,
    b12_rounds=1,
    b11_runs=24,
    b11_workers=(1, 2),
    b11_rounds=1,
    b11_stream_s=0.5,
    b11_claimers=(4,),
    b11_claim_s=0.2,
    b11_queued=500,
    b13_tasks=2,
    b13_steps=4,
    soak_minutes=0.1,
    ceiling_calls=20,
)


# -- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The median of per-round values and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        vals = [v for v in values if v == v]  # drop NaN
        if not vals:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(statistics.median(vals), min(vals), max(vals))

    def scaled(self, k: float) -> Spread:
        return Spread(self.median * k, self.low * k, self.high * k)

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        if self.median != self.median:
            return "n/a"
        f = f"{{:,.{digits}f}}"
        mid = f.format(self.median) + unit
        return f"{mid} ({f.format(self.low)}–{f.format(self.high)})"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rotated(items: Sequence[Any], round_no: int) -> list[Any]:
    """``items`` rotated by the round number, so no arm always runs first."""
    k = round_no % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


async def interleave(
    arms: dict[str, Callable[[], Awaitable[dict[str, float]]]],
    rounds: int,
    *,
    warmup: bool = True,
) -> dict[str, list[dict[str, float]]]:
    """Run every arm once per round (order rotated); return each arm's per-round metrics.

    An arm is an async callable returning a dict of metrics for one round's work. With
    ``warmup`` every arm runs once before the first round, unrecorded.
    """
    names = list(arms)
    if warmup:
        for name in names:
            await arms[name]()
    out: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in rotated(names, r):
            out[name].append(await arms[name]())
    return out


async def interleave_sliced(
    arms: dict[str, Callable[[int], Awaitable[dict[str, Any]]]],
    rounds: int,
    per_round: int,
    slices: int,
) -> dict[str, list[dict[str, Any]]]:
    """Like :func:`interleave`, with each round's work cut into ``slices`` pieces that the arms
    take in turn (A B C, B C A, ...), so every arm of a round sees the same moments of machine
    load. An arm is called with a count of operations and returns additive totals: numbers
    are summed and lists concatenated over the round's slices. One unrecorded warm-up slice."""
    names = list(arms)
    piece = max(per_round // slices, 1)
    for name in names:
        await arms[name](piece)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        totals: dict[str, dict[str, Any]] = {n: {} for n in names}
        for k in range(slices):
            for name in rotated(names, r + k):
                for key, value in (await arms[name](piece)).items():
                    acc = totals[name]
                    acc[key] = acc.get(key, [] if isinstance(value, list) else 0) + value
        for name in names:
            out[name].append(totals[name])
    return out


def ratios(results: dict[str, list[dict[str, float]]], arm: str, base: str, metric: str) -> Spread:
    """Per-round ratio ``arm/base`` of one metric, summarised."""
    pairs = zip(results[arm], results[base], strict=True)
    return Spread.of([a[metric] / b[metric] if b[metric] else float("nan") for a, b in pairs])


def metric(results: dict[str, list[dict[str, float]]], arm: str, name: str) -> Spread:
    return Spread.of([r[name] for r in results[arm]])


def diffs(results: dict[str, list[dict[str, float]]], arm: str, base: str, metric: str) -> Spread:
    """Per-round difference ``arm - base`` of one metric, summarised."""
    pairs = zip(results[arm], results[base], strict=True)
    return Spread.of([a[metric] - b[metric] for a, b in pairs])


# -- the fake server as a separate process ----------------------------------------------------


class FakeServerProcess:
    """``python -m harness.testing.fakeserver`` in a subprocess; knobs set through ``/reset``."""

    def __init__(self, **knobs: Any) -> None:
        self.knobs = knobs
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._ps: psutil.Process | None = None

    def start(self) -> FakeServerProcess:
        args = [sys.executable, "-m", "harness.testing.fakeserver", "--port", "0"]
        for key, value in self.knobs.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.host, port = line.split()[1].rsplit(":", 1)
        self.port = int(port)
        self._ps = psutil.Process(self.proc.pid)
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def reset(self, **knobs: Any) -> None:
        """Zero the counters; change the given knobs (they stay changed)."""
        self._call("/reset", knobs or {})

    def stats(self) -> dict[str, Any]:
        return self._call("/stats")

    def requests(self) -> list[dict[str, Any]]:
        """The server's request log since the last reset (arrival and served times, path,
        client port), in arrival order."""
        entries: list[dict[str, Any]] = self._call("/requests")["requests"]
        return entries

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        assert self._ps is not None
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> FakeServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CpuMeter:
    """Wall time and CPU time of this process and of the fake server over one measured span."""

    def __init__(self, server: FakeServerProcess | None = None) -> None:
        self.server = server
        self._me = psutil.Process()

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        c = self._me.cpu_times()
        self.c0 = c.user + c.system
        self.s0 = self.server.cpu_seconds() if self.server else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        c = self._me.cpu_times()
        self.cpu = c.user + c.system - self.c0
        self.server_cpu = (self.server.cpu_seconds() - self.s0) if self.server else 0.0

    @property
    def server_busy(self) -> float:
        """Share of one core the fake server used during the span (1.0 = saturated)."""
        return self.server_cpu / self.wall if self.wall else 0.0

    @property
    def client_busy(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0


# -- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a result table."""

    measure: str
    value: str
    target: str = ""
    verdict: str = ""  # "met", "missed", "" (context)
    context: str = ""


@dataclass
class Section:
    """One benchmark's results: a table plus notes."""

    key: str
    title: str
    method: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))

    def markdown(self) -> str:
        lines = [f"## {self.key} — {self.title}", "", self.method, ""]
        lines += [
            "| measure | result: median (min–max of rounds) | target | verdict | context |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            verdict = {"met": "met", "missed": "**missed**"}.get(r.verdict, r.verdict)
            lines.append(f"| {r.measure} | {r.value} | {r.target} | {verdict} | {r.context} |")
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        lines.append("")
        lines.append(f"_({self.seconds:.0f} s)_")
        return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "missed")


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "memory": f"{mem:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load": " / ".join(f"{x:.2f}" for x in load),
    }


def versions(names: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def quiet_harness_logs() -> None:
    """Configure harness logging as a worker does (JSON lines, info), written to /dev/null:
    the cost of building every log line is measured, the terminal's is not."""
    from harness import logs

    logs.configure(json=True, level="info", stream=_devnull())


@functools.cache
def _devnull() -> Any:
    """One /dev/null stream for the whole process (configuring logs again reuses it),
    closed when the process exits."""
    stream = open(os.devnull, "w")  # noqa: SIM115 (kept open on purpose until exit)
    atexit.register(stream.close)
    return stream


# -- workspaces ---------------------------------------------------------------------------


def make_workspace(root: Path, base_url: str, **extra_env: str) -> tuple[Any, dict[str, str]]:
    """A copy of the repository's default workspace under ``root``, its model provider pointed
    at ``base_url``. Returns the loaded Workspace and the environment a subprocess needs."""
    import shutil

    from harness.settings import Workspace, load_settings

    for part in ("config", "agents", "tools"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "var").mkdir(exist_ok=True)
    env = {  # the embedded model's entries, pointed at the fake server
        "HARNESS_PROVIDERS__LOCAL__BASE_URL": base_url,
        "HARNESS_PROVIDERS__LOCAL__LOCAL": "false",
        "HARNESS_LOCAL__AUTOSTART": "false",
        "HARNESS_PROVIDERS__LOCAL__MAX_CONCURRENCY": "512",
        **extra_env,
    }
    return Workspace(root=root, settings=load_settings(root, environ=env)), env


def subprocess_env(env: dict[str, str], root: Path) -> dict[str, str]:
    """This process's environment without HARNESS_* settings, plus ``env`` and the workspace."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    out.update(env)
    out["HARNESS_WORKSPACE"] = str(root)
    return out
