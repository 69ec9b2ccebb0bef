"""The JSON log lines a worker writes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import structlog

from harness import logs, scrub


def _lines(emit: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    logs.configure(json=True, stream=out)
    try:
        emit(structlog.get_logger("harness.test"))
    finally:
        structlog.reset_defaults()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_event_level_utc_timestamp_and_context() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    before = datetime.now(UTC)
    [line] = _lines(lambda log: log.bind(task_id=7).info("model_step", tokens=12, what=Odd()))
    after = datetime.now(UTC)
    assert line["event"] == "model_step" and line["level"] == "info"
    assert line["task_id"] == 7 and line["tokens"] == 12 and line["what"] == "<odd>"
    stamp = line["timestamp"]
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-29T12:00:00.000000Z")
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= when <= after


def test_an_exception_is_rendered_into_the_line() -> None:
    def emit(log: Any) -> None:
        try:
            raise ValueError("bad input")
        except ValueError:
            log.exception("task_crashed")

    [line] = _lines(emit)
    assert line["level"] == "error" and "ValueError: bad input" in line["exception"]


def test_secrets_are_redacted_by_key_and_by_value() -> None:
    logs.add_secret("sk-test-abcdefgh")
    try:
        [line] = _lines(
            lambda log: log.warning(
                "upstream_said",
                api_key="anything",
                body="key sk-test-abcdefgh refused",
                url="https://x/?k=sk-test-abcdefgh",
                status=401,
            )
        )
    finally:
        scrub.forget_secret("sk-test-abcdefgh")
    assert line["api_key"] == "[redacted]" and line["status"] == 401
    assert line["body"] == "key [redacted] refused" and line["url"] == "https://x/?k=[redacted]"


def test_a_console_log_line_shows_control_characters_as_text() -> None:
    out = io.StringIO()
    logs.configure(json=False, stream=out)
    structlog.get_logger("t").warning("task_failed", reason="model said \x1b[2J\x1b]0;x\x07")
    line = out.getvalue()
    assert "\x1b[2J" not in line and "\\x1b[2J" in line and "\x07" not in line
