"""structlog setup: human-readable on a terminal, JSON lines otherwise (or with ``--log-json``).

Every event passes through ``redact``: values of keys that look like secrets, and any API key
harness has read (or secret-looking environment variable at start), are replaced before
anything is written.
"""

from __future__ import annotations

import json as stdjson
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from functools import cache
from typing import Any

import structlog

SECRET_KEYS = ("authorization", "api_key", "apikey", "password", "secret", "token_value")


_secrets: set[str] = set()  # values never written: API keys read, secret-looking env vars


def add_secret(value: str | None) -> None:
    """Never log ``value`` (called for every API key harness reads)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def _scan_environment() -> None:
    for name, value in os.environ.items():
        if name.endswith(("_API_KEY", "_TOKEN", "_SECRET")) or name == "HARNESS_API_KEY":
            add_secret(value)


@cache
def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(s in lowered for s in SECRET_KEYS)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    secrets = _secrets
    for key, value in event.items():  # values change in place, keys never: safe to iterate
        if _secret_key(key):
            event[key] = "[redacted]"
        elif secrets and isinstance(value, str):
            for s in secrets:
                if s in value:
                    value = event[key] = value.replace(s, "[redacted]")
    return event


class _Writer:
    """A structlog logger writing each line to a stream looked up when writing (so a
    redirected or replaced ``sys.stderr``, e.g. under pytest, is honoured)."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _UtcStamp:
    """``timestamp``: ISO 8601 in UTC with microseconds (``2026-11-29T12:00:00.000000Z``).
    The part up to the second is formatted once per second: a worker logs every model step,
    and structlog's TimeStamper cost about as much as the rest of a JSON line."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second = int(now)
        cached, text = self._second  # one tuple: threads see a consistent pair
        if cached != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event["timestamp"] = f"{text}.{int((now - second) * 1e6):06d}Z"
        return event


def _unencodable(value: Any) -> Any:
    """What the JSON lines show for a value JSON has no type for (as structlog does)."""
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if structlog_form is not None else repr(value)


_ENCODER = stdjson.JSONEncoder(default=_unencodable)  # built once, not per line


def _json_line(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    return _ENCODER.encode(event)


def configure(*, json: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Configure structlog once per process. ``json=None``: JSON unless stderr is a terminal."""
    _scan_environment()
    if json is None:
        json = not (stream or sys.stderr).isatty()
    stamp: Any
    renderer: Any
    if json:
        stamp, renderer = _UtcStamp(), _json_line
    else:
        stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
        renderer = structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *args: _Writer(stream),
        cache_logger_on_first_use=False,
    )
