"""structlog setup: human-readable on a terminal, JSON lines otherwise (or with ``--log-json``).

Every event passes through ``redact``: values of keys that look like secrets, and any API key
harness has read (or secret-looking environment variable at start), are replaced before
anything is written.

structlog is imported only when something logs: a read-only command that logs nothing never
pays for it (it and the Rich tracebacks it loads cost ~80 ms). :func:`configure` applies at
once when structlog is loaded, else as soon as anything imports it; :func:`get_logger` is a
logger that imports it on first use.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json as stdjson
import logging
import sys
import time
from collections.abc import MutableMapping
from functools import cache
from typing import Any

from . import scrub

SECRET_KEYS = ("authorization", "api_key", "apikey", "password", "secret", "token_value")


def add_secret(value: str | None) -> None:
    """Never log ``value`` (called for every API key harness reads): see
    :func:`harness.scrub.add_secret`, the one registry of secrets."""
    scrub.add_secret(value)


@cache
def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(s in lowered for s in SECRET_KEYS)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():  # values change in place, keys never: safe to iterate
        if _secret_key(key):
            event[key] = scrub.REDACTED
        elif isinstance(value, str):
            event[key] = scrub.redact(value)
    return event


def _printable(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub.printable(value)
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


_pending: dict[str, Any] | None = None  # the configuration waiting for structlog


def configure(*, json: bool | None = None, level: str = "info", stream: Any = None) -> None:
    """Configure structlog (again to change it). ``json=None``: JSON unless stderr is a
    terminal. Applied at once when structlog is loaded, else when it first is."""
    global _pending
    scrub.scan_environment()
    _pending = {"json": json, "level": level, "stream": stream}
    if "structlog" in sys.modules:
        _apply()
    elif not any(isinstance(f, _WhenImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenImported())


def _apply() -> None:
    global _pending
    options, _pending = _pending, None
    if options is not None:
        _configure(**options)


class _WhenImported(importlib.abc.MetaPathFinder):
    """Finds structlog as the other finders do, and applies the pending configuration as
    soon as its module has run: code that imports structlog itself logs as configured."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "structlog":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        run = getattr(loader, "exec_module", None)
        if loader is not None and run is not None:

            def exec_module(module: Any) -> None:
                run(module)
                _apply()

            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


class _Lazy:
    """A structlog logger imported (and the configuration applied) at its first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import structlog

        _apply()
        return getattr(structlog.get_logger(self._name), attr)


def get_logger(name: str) -> Any:
    """A logger for ``name`` that costs nothing until it logs."""
    return _Lazy(name)


def _configure(*, json: bool | None, level: str, stream: Any) -> None:
    import structlog

    if json is None:
        json = not (stream or sys.stderr).isatty()
    stamp: Any
    renderer: Any
    safe: list[Any] = [redact]
    if json:  # JSON escapes control characters itself
        stamp, renderer = _UtcStamp(), _json_line
    else:  # a terminal would obey them: a model's text in an event is shown, never acted on
        stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
        renderer = structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
        safe.append(_printable)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            *safe,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *args: _Writer(stream),
        cache_logger_on_first_use=False,
    )
