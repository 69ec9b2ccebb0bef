"""Real models: the hosted quick start as the README writes it, setup errors that say what to
change (exit 2, in seconds), windows and prices with their sources (``harness models``)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from sqlalchemy import func, select

from harness.provider import catalogue
from harness.provider.local import LocalServer
from harness.settings import load_workspace
from harness.store import Store
from harness.store.schema import calls, tasks
from tests.llm_fixtures import free_port, llm_settings
from tests.processes import HARNESS, Procs

QUICK = {"HARNESS_LOCAL__AUTOSTART": "false", "HARNESS_WORKER__RETRY_BACKOFF_S": "30"}


def harness(ws: Path, env: dict[str, str], *args: str, timeout: float = 120) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    return subprocess.run(
        [str(HARNESS), "-w", str(ws), *args],
        env={**clean, **QUICK, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_hosted_quick_start_runs_a_delegated_goal_with_native_tools(
    procs: Procs, workspace_dir: Path
) -> None:
    """The README's three variables, nothing else: native tool calls, the answer cap and the
    prices of a hosted model, one line saying which model and endpoint are used."""
    fake = procs.fake("--model", "gpt-4.1-mini", "--api-key", "sk-test-1234567890")
    env = {
        "HARNESS_BASE_URL": fake.url,
        "HARNESS_API_KEY": "sk-test-1234567890",
        "HARNESS_MODEL": "gpt-4.1-mini",
    }
    res = harness(workspace_dir, env, "run", "--json", "Brief me on HBM supply for 2027")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"using model 'hosted' (gpt-4.1-mini) at {fake.url}" in res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["answer"]
    st = Store.open(load_workspace(workspace_dir).database_url())
    agents = st.read_sync(lambda c: list(c.execute(select(tasks.c.agent)).scalars()))
    assert agents[0] == "arnold" and len(agents) >= 2  # delegated through native tool calls
    cost, tokens = st.read_sync(
        lambda c: c.execute(
            select(func.sum(calls.c.cost_usd), func.sum(calls.c.prompt_tokens))
        ).one()
    )
    entry = catalogue.lookup("gpt-4.1-mini", fake.url)
    assert entry is not None and entry.price_input
    assert cost > 0 and cost >= tokens * entry.price_input / 1e6  # priced by the catalogue
    st.close()
    assert fake.stats()["refused"] == 0  # every request carried the key


def test_an_unreachable_endpoint_fails_at_once_naming_what_to_change(workspace_dir: Path) -> None:
    env = {"HARNESS_BASE_URL": "http://127.0.0.1:9/v1", "HARNESS_MODEL": "some-model"}
    started = time.monotonic()
    res = harness(workspace_dir, env, "run", "a goal")
    assert res.returncode == 2, res.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "model 'hosted' (some-model) at http://127.0.0.1:9/v1" in res.stderr
    assert "providers.hosted.base_url or HARNESS_BASE_URL" in res.stderr
    assert "ssl:default" not in res.stderr and "Traceback" not in res.stderr


def test_a_refused_key_fails_at_once_naming_the_variable(procs: Procs, workspace_dir: Path) -> None:
    fake = procs.fake("--api-key", "the-right-key-123")
    env = {"HARNESS_BASE_URL": fake.url, "HARNESS_API_KEY": "a-wrong-key-456789"}
    res = harness(workspace_dir, env, "run", "a goal")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "the API key was refused (HTTP 401)" in res.stderr
    assert "HARNESS_API_KEY" in res.stderr and "a-wrong-key" not in res.stderr


def test_an_unknown_model_fails_on_its_first_call_naming_the_setting(
    procs: Procs, workspace_dir: Path
) -> None:
    fake = procs.fake("--models", "known-model")
    env = {"HARNESS_BASE_URL": fake.url, "HARNESS_MODEL": "no-such-model"}
    started = time.monotonic()
    res = harness(workspace_dir, env, "run", "a goal")
    assert res.returncode == 2, res.stderr[-2000:]
    assert time.monotonic() - started < 30  # not three attempts with 30 s pauses
    assert "the server does not know this model" in res.stderr
    assert "models.hosted.id or HARNESS_MODEL" in res.stderr


def test_models_lists_windows_and_prices_with_their_sources(
    procs: Procs, workspace_dir: Path
) -> None:
    fake = procs.fake(
        "--model", "gpt-4.1-mini", "--context-window", "32768", "--overflow-style", "vllm"
    )
    env = {"HARNESS_BASE_URL": fake.url, "HARNESS_MODEL": "gpt-4.1-mini"}
    res = harness(workspace_dir, env, "models", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    hosted, local = rows["hosted"], rows["local"]
    assert hosted["default"] and hosted["status"] == "ok"
    assert hosted["context_window"] == 32768  # what the server says beats the catalogue
    assert hosted["context_window_source"] == "server (GET /models max_model_len)"
    assert hosted["price_input"] > 0 and hosted["price_source"].startswith("genai-prices")
    assert local["context_window"] == 8192 and "local.n_ctx" in local["context_window_source"]
    assert local["price_source"].startswith("none") and local["tools"] == "json"


@pytest.mark.parametrize(
    ("style", "source"),
    [("llamacpp", "server (GET /props n_ctx)"), ("vllm", "server (GET /models max_model_len)")],
)
def test_a_servers_window_is_read_as_it_reports_it(
    procs: Procs, workspace_dir: Path, style: str, source: str
) -> None:
    fake = procs.fake(
        "--model", "gpt-4.1-mini", "--context-window", "4096", "--overflow-style", style
    )
    res = harness(workspace_dir, {"HARNESS_BASE_URL": fake.url}, "models", "--json")
    [hosted] = [r for r in json.loads(res.stdout) if r["name"] == "hosted"]
    assert (hosted["context_window"], hosted["context_window_source"]) == (4096, source)


@pytest.fixture(scope="module")
def function_calling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server (llama-cpp-python) on the bundled model with native function
    calling, as someone serving a model of their own would run it: a plain hosted endpoint."""
    settings = llm_settings(f"http://127.0.0.1:{free_port()}/v1")
    local = settings.local.model_copy(update={"chat_format": "chatml-function-calling"})
    settings = settings.model_copy(update={"local": local})
    log_path = tmp_path_factory.mktemp("llama-fc") / "server.log"
    with start_blocking_portal() as portal:
        server = LocalServer(settings, port=local.port, log_path=log_path)
        portal.call(server.start)
        try:
            yield server.base_url
        finally:
            portal.call(server.stop)


@pytest.mark.llm
def test_the_hosted_quick_start_on_llama_cpp_with_native_tools(
    workspace_dir: Path, function_calling_server: str
) -> None:
    env = {"HARNESS_BASE_URL": function_calling_server, "HARNESS_MODEL": "smollm2-135m-instruct"}
    res = harness(workspace_dir, env, "run", "--json", "Brief me on HBM supply.", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["status"] == "done"
    st = Store.open(load_workspace(workspace_dir).database_url())
    rows = st.read_sync(lambda c: c.execute(select(tasks.c.agent, tasks.c.status)).all())
    st.close()
    assert rows[0] == ("arnold", "done") and len(rows) >= 2  # a native delegate call
    assert all(status == "done" for _, status in rows)
