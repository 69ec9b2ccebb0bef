"""B8: worker memory with many calls in flight; CLI start time (``harness --help``) and the
read-only commands a morning starts with (``status``, ``show``, ``ledger``, ``agents list``)
against the database the worker left (a warm disk: each is run once before it is timed)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .b7_restart import WorkerProcess, enqueue, harness_bin, wait_for
from .common import (
    FakeServerProcess,
    Section,
    Sizes,
    Spread,
    log,
    make_workspace,
    subprocess_env,
    verdict,
)


def _rss_mb(pid: int) -> float:
    """RSS of a process and its children, MiB."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return float(total / 2**20)


def _time_command(args: list[str], runs: int, env: dict[str, str] | None = None) -> Spread:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env
        )
        times.append(time.perf_counter() - t0)
    return Spread.of(times)


READ_ONLY = (["status"], ["show", "1"], ["ledger"], ["agents", "list"])
READ_BUDGET_S = 0.3


def _read_only_rows(s: Section, env: dict[str, str], runs: int) -> None:
    """One row per read-only command: its wall time (warm: run once before, with bytecode
    written, as after any install), and whether it imported SQLAlchemy (the largest import
    there is; the light read path avoids it)."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for command in READ_ONLY:
        args = [harness_bin(), *command]
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        spread = _time_command(args, runs, env)
        probe = "import sys, runpy; sys.argv = ['harness', *sys.argv[1:]]\ntry:\n"
        probe += "    runpy.run_module('harness', run_name='__main__')\nexcept SystemExit:\n"
        probe += "    pass\nprint('sqlalchemy' in sys.modules, file=sys.stderr)"
        check = subprocess.run(
            [sys.executable, "-c", probe, *command], capture_output=True, text=True, env=env
        )
        heavy = check.stderr.strip().endswith("True")
        s.add(
            f"`harness {' '.join(command)}` wall time",
            spread.scaled(1000).fmt(0, " ms"),
            f"<= {READ_BUDGET_S * 1000:.0f} ms",
            verdict(spread.median <= READ_BUDGET_S),
            "imports SQLAlchemy" if heavy else "no SQLAlchemy (light read path)",
        )


def _in_flight(server: FakeServerProcess) -> int:
    return int(server.stats()["in_flight"])


async def run(sizes: Sizes) -> Section:
    n = sizes.b8_in_flight
    s = Section(
        "B8",
        "worker memory and CLI start",
        f"Memory: `harness worker -c {n}` (a subprocess) with {n} queued tasks against a fake "
        f"server that holds every call for 120 s; once the server counts {n} calls in flight, "
        "the worker's RSS (with any children) is sampled 5 times over a second and the "
        "largest kept. For context, the RSS of the same worker idle, before the tasks were "
        "queued. CLI start: "
        f"wall time of `harness --help` over {sizes.b8_cli_runs} runs (median, min–max), then "
        "of the read-only commands against the workspace the worker left (each run once "
        "first: a warm disk).",
    )
    with FakeServerProcess(ttft_s=120.0) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        ws, env = make_workspace(root, server.base_url, HARNESS_WORKER__CONCURRENCY=str(n))
        full_env = subprocess_env(env, root)
        log(f"B8: an idle worker, then {n} calls in flight")
        w = WorkerProcess(full_env, "-c", str(n))
        try:
            wait_for(lambda: "worker_started" in w.events, 60)
            time.sleep(1.0)
            idle_mb = _rss_mb(w.pid)
            enqueue(ws.database_url(), n)  # the idle worker polls the queue, finds them
            reached = wait_for(lambda: _in_flight(server) >= n, 120, interval=0.1)
            samples = []
            for _ in range(5):
                samples.append(_rss_mb(w.pid))
                time.sleep(0.2)
            flying = _in_flight(server)
        finally:
            w.kill()
        _read_only_rows(s, full_env, sizes.b8_cli_runs)
    peak = max(samples)
    s.add(
        f"worker RSS, {flying} calls in flight",
        f"{peak:.0f} MiB",
        "<= 200 MB",
        verdict(peak <= 200 * 1e6 / 2**20 and reached),
        f"idle worker {idle_mb:.0f} MiB; {(peak - idle_mb) * 1024 / max(flying, 1):.0f} KiB "
        "per call in flight",
    )
    if not reached:
        s.notes.append(f"Only {flying} of {n} calls were in flight after 120 s.")
    cli = _time_command([harness_bin(), "--help"], sizes.b8_cli_runs)
    bare = _time_command([sys.executable, "-c", "pass"], sizes.b8_cli_runs)
    imp = _time_command([sys.executable, "-c", "import harness.cli"], sizes.b8_cli_runs)
    s.add(
        "`harness --help` wall time",
        cli.scaled(1000).fmt(0, " ms"),
        "<= 300 ms",
        verdict(cli.median <= 0.3),
        f"bare `python -c pass` {bare.median * 1000:.0f} ms; `import harness.cli` "
        f"{imp.median * 1000:.0f} ms",
    )
    return s
