"""The preflight probe and the catalogue's kept answers: what `harness run` does before its first
model call, done once (the probe's connection is the first call's; the catalogue is read from
the workspace instead of loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.messages import ChatMessage, ChatRequest
from harness.provider import OpenAIProvider, catalogue
from harness.provider.catalogue import Entry, Kept
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


ENTRY = Entry(1000, 0.4, 0.1, 1.6, "genai-prices 0.0: openai/gpt-4.1-mini")


def test_catalogue_answers_are_kept_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def lookup(model_id: str, base_url: str | None = None) -> Entry | None:
        asked.append(model_id)
        return ENTRY if model_id == "gpt-4.1-mini" else None

    monkeypatch.setattr(catalogue, "lookup", lookup)
    kept = tmp_path / "var" / catalogue.KEPT_FILE
    settings = settings_for("http://x.test/v1").model_copy()
    settings.models["n"] = settings.models["m"].model_copy(update={"id": "unknown-model"})
    first, facts = catalogue.resolve(settings, kept=kept)
    assert sorted(asked) == ["gpt-4.1-mini", "unknown-model"] and kept.is_file()
    asked.clear()
    again, facts_again = catalogue.resolve(settings, kept=kept)
    assert asked == []  # both answers (a miss too) read from the file
    assert again == first and facts_again == facts
    assert first.models["m"].price_input == 0.4 and first.models["m"].context_window == 1000


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: "not json {",
        lambda data: json.dumps(data | {"stamp": "genai-prices 0.0.1, 1999-01-01"}),
        lambda data: json.dumps(data | {"entries": []}),
        lambda data: json.dumps(
            data | {"entries": {k: v | {"window": "many"} for k, v in data["entries"].items()}}
        ),
        lambda data: json.dumps(
            data | {"entries": {k: v | {"price_input": -1} for k, v in data["entries"].items()}}
        ),
        lambda data: json.dumps(data | {"entries": {k: {"window": 5} for k in data["entries"]}}),
    ],
    ids=[
        "not-json",
        "other-version-or-day",
        "entries-not-a-mapping",
        "bad-window",
        "negative-price",
        "missing-fields",
    ],
)
def test_a_stale_or_damaged_file_is_looked_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Any
) -> None:
    asked: list[str] = []

    def lookup(model_id: str, base_url: str | None = None) -> Entry | None:
        asked.append(model_id)
        return ENTRY

    monkeypatch.setattr(catalogue, "lookup", lookup)
    kept = tmp_path / catalogue.KEPT_FILE
    settings = settings_for("http://x.test/v1")
    catalogue.resolve(settings, kept=kept)
    kept.write_text(damage(json.loads(kept.read_text())))
    asked.clear()
    resolved, _ = catalogue.resolve(settings, kept=kept)
    assert asked == ["gpt-4.1-mini"] and resolved.models["m"].price_output == 1.6
    assert Kept.open(kept).entries  # written again, whole


def test_an_unwritable_place_only_costs_the_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalogue, "lookup", lambda model_id, base_url=None: ENTRY)
    blocker = tmp_path / "var"
    blocker.write_text("a file where the folder should be")
    resolved, _ = catalogue.resolve(settings_for("http://x.test/v1"), kept=blocker / "c.json")
    assert resolved.models["m"].price_input == 0.4
    assert list(tmp_path.iterdir()) == [blocker]  # nothing left behind
