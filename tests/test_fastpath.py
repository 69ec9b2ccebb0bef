"""The direct aiohttp POST rests on internals of httpx and httpx-aiohttp: this fails loudly
when an upgrade removes one (the client then falls back to the public path, slower)."""

from __future__ import annotations

import pytest

from harness.provider.fastpath import INTERNALS, missing_internals
from harness.provider.transport import ProviderClient
from harness.settings import ProviderConfig
from harness.testing import FakeClock
from harness.testing.fakeserver import FakeConfig, FakeServer


def test_every_internal_the_fast_path_uses_is_there() -> None:
    assert missing_internals() == [], (
        "httpx / httpx-aiohttp changed: update harness/provider/fastpath.py for "
        f"{missing_internals()} (it relies on {INTERNALS})"
    )


@pytest.mark.anyio
async def test_a_plain_call_takes_the_direct_path_and_answers() -> None:
    clock = FakeClock()
    async with FakeServer(FakeConfig(tool_calls="never")) as server:
        client = ProviderClient(
            "fake",
            ProviderConfig(base_url=server.base_url),
            transport_factory=None,
            sleep=clock.sleep,
            clock=clock,
        )
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            reply = await client.send(body, stream=False, tokens=10)
            assert client._direct is not None  # the fast path was set up and used
            assert reply.status == 200 and reply.message.content
        finally:
            await client.aclose()
