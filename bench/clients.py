"""The clients compared: raw aiohttp, raw httpx, the openai SDK, LiteLLM, and harness.

Each sends the same ``POST /chat/completions`` body (model, messages, max_tokens) to the same
server and returns the tokens the server reported (prompt + completion), so every arm does the
same work: send, receive, parse, read the usage.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Protocol

import aiohttp
import httpx

MODEL = "fake-model"


def messages(prompt_chars: int = 200) -> list[dict[str, str]]:
    """A system and a user message; the user message is ``prompt_chars`` long."""
    text = ("The economics of inference: why decode is memory-bound. " * 200)[:prompt_chars]
    return [
        {"role": "system", "content": "You are a concise research assistant."},
        {"role": "user", "content": text},
    ]


class Client(Protocol):
    name: str

    async def start(self) -> None: ...

    async def call(self) -> int: ...

    async def close(self) -> None: ...


def _tokens(usage: dict[str, Any] | None) -> int:
    if not usage:
        return 0
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)


class _Arm:
    """What every arm is given: the server, the messages, ``max_tokens`` and how many calls
    may be in flight; ``payload`` is the request body the raw arms send."""

    name: str

    def __init__(
        self,
        base_url: str,
        msgs: list[dict[str, str]],
        *,
        max_tokens: int = 1024,
        concurrency: int = 256,
    ) -> None:
        self.base_url = base_url
        self.url = base_url + "/chat/completions"
        self.msgs = msgs
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.payload = {"model": MODEL, "messages": msgs, "max_tokens": max_tokens}


class RawAiohttp(_Arm):
    """The floor: one aiohttp session, ``json.loads`` of the body, the usage read by hand."""

    name = "raw aiohttp"

    session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self.session = aiohttp.ClientSession(connector=connector)

    async def call(self) -> int:
        assert self.session is not None
        async with self.session.post(self.url, json=self.payload) as resp:
            body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        data = json.loads(body)
        _ = data["choices"][0]["message"]
        return _tokens(data.get("usage"))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class RawHttpx(_Arm):
    """httpx's own transport (h11), no wrapper."""

    name = "raw httpx"

    client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        self.client = httpx.AsyncClient(limits=limits, timeout=60)

    async def call(self) -> int:
        assert self.client is not None
        resp = await self.client.post(self.url, json=self.payload)
        resp.raise_for_status()
        data = json.loads(resp.content)
        _ = data["choices"][0]["message"]
        return _tokens(data.get("usage"))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


class OpenAISDK(_Arm):
    """The official ``openai`` SDK's ``AsyncOpenAI`` with its default (httpx) client."""

    name = "openai SDK"

    client: Any = None

    async def start(self) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=self.base_url, api_key="bench", max_retries=0)

    async def call(self) -> int:
        resp = await self.client.chat.completions.create(
            model=MODEL, messages=self.msgs, max_tokens=self.max_tokens
        )
        _ = resp.choices[0].message
        return int(resp.usage.prompt_tokens + resp.usage.completion_tokens)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


def litellm_available() -> bool:
    try:
        from importlib import metadata

        metadata.version("litellm")
    except Exception:
        return False
    return True


class LiteLLM(_Arm):
    """LiteLLM's ``acompletion`` with an ``openai/`` model at the same base URL."""

    name = "LiteLLM acompletion"

    _acompletion: Any = None

    async def start(self) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        self._acompletion = litellm.acompletion

    async def call(self) -> int:
        resp = await self._acompletion(
            model=f"openai/{MODEL}",
            messages=self.msgs,
            max_tokens=self.max_tokens,
            api_base=self.base_url,
            api_key="bench",
            num_retries=0,
        )
        _ = resp.choices[0].message
        return int(resp.usage.prompt_tokens + resp.usage.completion_tokens)

    async def close(self) -> None:
        return None


def harness_settings(
    base_url: str,
    *,
    concurrency: int = 256,
    transport: Literal["aiohttp", "httpx"] = "aiohttp",
    max_tokens: int = 1024,
) -> Any:
    """Settings with one provider at ``base_url`` and one model ``fake``."""
    from harness.settings import ModelConfig, ProviderConfig, Settings

    return Settings(
        default_model="fake",
        providers={
            "fake": ProviderConfig(
                base_url=base_url, max_concurrency=concurrency, transport=transport
            )
        },
        models={"fake": ModelConfig(provider="fake", id=MODEL, max_tokens=max_tokens)},
    )


class Harness:
    """harness's ``OpenAIProvider.complete`` (retries, pacing, usage capture, call records)."""

    def __init__(
        self,
        base_url: str,
        msgs: list[dict[str, str]],
        *,
        max_tokens: int = 1024,
        concurrency: int = 256,
        transport: Literal["aiohttp", "httpx"] = "aiohttp",
    ) -> None:
        from harness.messages import ChatMessage, ChatRequest

        self.name = "harness" if transport == "aiohttp" else f"harness ({transport})"
        self.settings = harness_settings(
            base_url, concurrency=concurrency, transport=transport, max_tokens=max_tokens
        )
        self.request = ChatRequest(
            model="fake",
            messages=[ChatMessage.model_validate(m) for m in msgs],
            max_tokens=max_tokens,
        )
        self.provider: Any = None

    async def start(self) -> None:
        from harness.provider import OpenAIProvider

        self.provider = OpenAIProvider(self.settings)

    async def call(self) -> int:
        completion = await self.provider.complete(self.request)
        return int(completion.usage.total_tokens)

    async def close(self) -> None:
        if self.provider is not None:
            await self.provider.aclose()
