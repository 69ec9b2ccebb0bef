"""The preflight probe and the catalogue's kept answers: what `harness run` does before its first
model call, done once (the probe's connection is the first call's; the catalogue is read from
the workspace instead of loaded)."""

from __future__ import annotations

from typing import Any

import pytest

from harness.messages import ChatMessage, ChatRequest
from harness.provider import OpenAIProvider
from harness.provider.probe import probe, probe_models
from harness.settings import Settings
from harness.testing.fakeserver import FakeConfig, FakeServer

pytestmark = pytest.mark.anyio


def settings_for(url: str, **model: Any) -> Settings:
    return Settings.model_validate(
        {
            "providers": {"p": {"base_url": url, "max_retries": 0}},
            "models": {"m": {"provider": "p", "id": "gpt-4.1-mini", "max_tokens": 20} | model},
            "default_model": "m",
        }
    )


async def test_the_first_call_reuses_the_probes_connection() -> None:
    config = FakeConfig(model="gpt-4.1-mini", context_window=4096, overflow_style="vllm")
    async with FakeServer(config) as server:
        settings = settings_for(server.base_url)
        provider = OpenAIProvider(settings)
        try:
            clients = {"p": provider.client("p").http_client()}
            found = await probe_models(settings, {"m"}, clients.__getitem__)
            assert found["p"].problem is None and found["p"].windows == {"gpt-4.1-mini": 4096}
            request = ChatRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
            done = await provider.complete(request)
            assert done.message.content
        finally:
            await provider.aclose()
        paths = [(e["path"], e["port"]) for e in server.log]
        assert [p for p, _ in paths] == ["/v1/models", "/v1/chat/completions"]
        assert paths[0][1] == paths[1][1]  # one connection: opened by the probe


async def test_a_probe_of_its_own_says_what_went_wrong() -> None:
    async with FakeServer(FakeConfig(api_key="the-key-1234")) as server:
        config = settings_for(server.base_url).providers["p"]
        refused = await probe("p", config)
        assert refused.kind == "auth" and refused.status == 401
    gone = await probe("p", settings_for("http://127.0.0.1:9/v1").providers["p"])
    assert gone.kind == "connect" and gone.problem is not None
    assert gone.problem.startswith("cannot reach http://127.0.0.1:9/v1: ")
    assert "ssl:" not in gone.problem
