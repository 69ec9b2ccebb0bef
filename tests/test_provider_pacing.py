"""Pacing, backoff, Retry-After parsing and token estimates (pure parts of the provider)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from harness.messages import (
    ChatMessage,
    ChatRequest,
    FunctionCall,
    FunctionSpec,
    ToolCall,
    ToolSpec,
    WireUsage,
)
from harness.provider import usage_from_wire
from harness.provider.pacing import (
    RETRY_AFTER_CAP_S,
    Pacer,
    TokenBucket,
    backoff_delay,
    parse_retry_after,
)
from harness.provider.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    estimate_completion_tokens,
    estimate_message_tokens,
    estimate_prompt_tokens,
    estimate_tokens,
)
from harness.testing import FakeClock

pytestmark = pytest.mark.anyio


# -- Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "99999"}, RETRY_AFTER_CAP_S),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_values(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retry_after_date_against_the_servers_date() -> None:
    now = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    headers = {
        "date": format_datetime(now, usegmt=True),
        "retry-after": format_datetime(now + timedelta(seconds=42), usegmt=True),
    }
    assert parse_retry_after(headers) == 42.0


def test_retry_after_date_against_our_clock() -> None:
    when = datetime.now(UTC) + timedelta(seconds=60)
    delay = parse_retry_after({"retry-after": format_datetime(when, usegmt=True)})
    assert delay is not None and 58.0 <= delay <= 60.0
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


# -- backoff -----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    assert [backoff_delay(n, 0.5, 3.0, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [
        0.5,
        1.0,
        2.0,
        3.0,
    ]
    assert [backoff_delay(n, 0.5, 3.0, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [
        0.25,
        0.5,
        1.0,
        1.5,
    ]
    assert backoff_delay(3, 0.0, 10.0) == 0.0


# -- buckets and the pacer ---------------------------------------------------------------


def test_token_bucket_allows_a_minute_then_the_steady_rate() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(60, clock)  # one per second
    assert [bucket.take(1) for _ in range(60)] == [0.0] * 60
    assert bucket.take(1) == pytest.approx(1.0)
    assert bucket.take(1) == pytest.approx(2.0)  # reservations queue up
    clock.now = 10.0
    assert bucket.take(1) == 0.0
    assert bucket.take(1000) == pytest.approx(60.0 - 7.0)  # capped at the capacity


def test_token_bucket_give_back() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(600, clock)
    assert bucket.take(600) == 0.0
    bucket.give_back(300)
    assert bucket.take(300) == 0.0
    assert bucket.take(60) == pytest.approx(6.0)


async def test_pacer_pause_is_shared_and_rechecked() -> None:
    clock = FakeClock(100.0)
    pacer = Pacer(requests_per_minute=None, tokens_per_minute=None, sleep=clock.sleep, clock=clock)
    await pacer.wait_turn(10)
    assert clock.sleeps == []
    pacer.pause_until(105.0)
    pacer.pause_until(103.0)  # an earlier instant never shortens a pause
    await pacer.wait_turn(10)
    assert clock.sleeps == [5.0] and clock() == 105.0


async def test_pacer_tokens_per_minute_and_settle() -> None:
    clock = FakeClock(0.0)
    pacer = Pacer(requests_per_minute=None, tokens_per_minute=600, sleep=clock.sleep, clock=clock)
    await pacer.wait_turn(500)
    pacer.settle(reserved=500, used=100)  # 400 come back
    await pacer.wait_turn(500)
    assert clock.sleeps == []
    await pacer.wait_turn(100)
    assert clock.sleeps == [pytest.approx(10.0)]  # 100 short at 10 tokens/s


# -- token estimates ---------------------------------------------------------------------


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("日本語") == 3
    assert estimate_tokens("a" * 400) == 100
    # digits and punctuation are a token each (tokenizers split them finely); letters in 4s
    assert estimate_tokens("12.50") == 5
    assert estimate_tokens('{"q":"x"}') == 7 + 1
    assert estimate_tokens("https://example.org/a") == 5 + 4  # :/./ and /, then 16 letters
    assert estimate_tokens("naïve 42") == 2 + 2 + 1  # 4,2; ceil(5 ASCII others / 4); ï


def test_estimate_messages_and_requests() -> None:
    call = ToolCall(id="c1", function=FunctionCall(name="search", arguments='{"q":"x"}'))
    assistant = ChatMessage(role="assistant", tool_calls=[call])
    assert estimate_message_tokens(assistant) == MESSAGE_OVERHEAD + 2 + 2 + 8
    assert estimate_completion_tokens(assistant) == 2 + 8
    assert estimate_completion_tokens(ChatMessage(role="assistant", content="")) == 1
    user = ChatMessage(role="user", content="a" * 40)
    bare = ChatRequest(model="m", messages=[user])
    assert estimate_prompt_tokens(bare) == REPLY_PRIMING + MESSAGE_OVERHEAD + 10
    tool = ToolSpec(function=FunctionSpec(name="search", description="x" * 400))
    with_tools = bare.model_copy(update={"tools": [tool]})
    assert estimate_prompt_tokens(with_tools) > estimate_prompt_tokens(bare) + 100


# -- usage -------------------------------------------------------------------------------


def test_usage_from_wire_fills_gaps_and_marks_estimates() -> None:
    message = ChatMessage(role="assistant", content="x" * 40)
    full = WireUsage.model_validate(
        {
            "prompt_tokens": 9,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 8},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    )
    got = usage_from_wire(full, 999, message)
    assert (got.prompt_tokens, got.completion_tokens, got.cached_tokens) == (9, 4, 8)
    assert (got.reasoning_tokens, got.estimated) == (2, False)
    half = usage_from_wire(WireUsage(prompt_tokens=9), 999, message)
    assert (half.prompt_tokens, half.completion_tokens, half.estimated) == (9, 10, True)
    none = usage_from_wire(None, 50, message)
    assert (none.prompt_tokens, none.completion_tokens, none.estimated) == (50, 10, True)
    empty_answer = usage_from_wire(WireUsage(prompt_tokens=9, completion_tokens=0), 1, message)
    assert (empty_answer.completion_tokens, empty_answer.estimated) == (0, False)
