"""A fake clock for code that takes ``clock`` and ``sleep`` (the provider, its pacing)."""

from __future__ import annotations

import anyio.lowlevel

__all__ = ["FakeClock"]


class FakeClock:
    """A ``clock`` and ``sleep`` pair to inject: sleeping advances the clock at once.

    ``clock.sleeps`` lists every delay asked for, in order.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()
