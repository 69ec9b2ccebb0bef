"""Pacing: when a call to one provider may start, and how long to back off after a failure.

One :class:`Pacer` per provider, shared by every call to it:

- a shared *not-before* instant: when any call gets a 429 (or a ``Retry-After``), every call
  to that provider waits until that instant before sending, instead of each one discovering
  the rate limit on its own;
- optional requests-per-minute and tokens-per-minute budgets, as token buckets that refill
  continuously (a full minute's worth may go out at once, then the steady rate applies).
  A bucket may go negative: a caller reserves its share at once and sleeps until the bucket
  has refilled to cover it, so waiters are served in arrival order.

``sleep`` and ``clock`` are injected; an injected ``sleep`` must advance the injected clock
by (at least) the time asked for, as real time does, or :meth:`Pacer.wait_paused` spins.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

RETRY_AFTER_CAP_S = 300.0  # a server asking for longer is treated as asking for this


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait as asked by ``retry-after-ms`` or ``Retry-After``, or None.

    ``Retry-After`` may be seconds or an HTTP date. A date is measured against the
    response's own ``Date`` header when present (immune to clock skew between us and the
    server), else against our wall clock. The result is clamped to ``[0, RETRY_AFTER_CAP_S]``.
    """
    millis = _float(headers.get("retry-after-ms"))
    if millis is not None:
        return _clamp(millis / 1000.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _float(raw)
    if seconds is None:
        when = _http_date(raw)
        if when is None:
            return None
        reference = _http_date(headers.get("date")) or datetime.now(UTC)
        seconds = (when - reference).total_seconds()
    return _clamp(seconds)


def _float(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _http_date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter" after failed attempt number ``attempt`` (1-based).

    The ceiling is ``min(cap, base * 2**(attempt-1))``; the delay is drawn uniformly from
    ``[ceiling/2, ceiling]`` so concurrent callers spread out but never retry at once.
    """
    ceiling = min(cap, base * (2.0 ** max(attempt - 1, 0)))
    return ceiling / 2 + rand() * ceiling / 2


class TokenBucket:
    """A budget of ``per_minute`` units that refills continuously at ``per_minute / 60`` per s."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._level = self.capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(now - self._updated, 0.0)
        self._level = min(self.capacity, self._level + elapsed * self.rate)
        self._updated = now

    def take(self, amount: float) -> float:
        """Reserve ``amount`` (capped at the capacity); return the seconds to wait before use."""
        self._refill()
        self._level -= min(amount, self.capacity)
        return 0.0 if self._level >= 0 else -self._level / self.rate

    def give_back(self, amount: float) -> None:
        """Return an unused part of a reservation (e.g. tokens reserved but not spent)."""
        self._refill()
        self._level = min(self.capacity, self._level + max(amount, 0.0))


class Pacer:
    """Decides when the next call to one provider may go out. Not thread-safe (one loop)."""

    def __init__(
        self,
        *,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        sleep: Sleep,
        clock: Clock,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self.not_before = -math.inf
        self._requests = TokenBucket(requests_per_minute, clock) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute, clock) if tokens_per_minute else None

    def pause_until(self, instant: float) -> None:
        """Hold every call to this provider until ``instant`` (on the injected clock)."""
        self.not_before = max(self.not_before, instant)

    async def wait_paused(self) -> None:
        """Sleep until the shared not-before instant has passed (re-checked after waking)."""
        while (delay := self.not_before - self._clock()) > 0:
            await self._sleep(delay)

    async def wait_turn(self, tokens: int) -> None:
        """Wait out a pause, then reserve one request and ``tokens`` from the minute budgets."""
        await self.wait_paused()
        delay = 0.0
        if self._requests is not None:
            delay = max(delay, self._requests.take(1))
        if self._tokens is not None:
            delay = max(delay, self._tokens.take(tokens))
        if delay > 0:
            await self._sleep(delay)
        await self.wait_paused()

    def settle(self, reserved: int, used: int) -> None:
        """Give back tokens reserved by :meth:`wait_turn` but not used by the call."""
        if self._tokens is not None and used < reserved:
            self._tokens.give_back(reserved - used)
