"""Text from outside (a model, a tool, a server, a user's file) made safe to store and to show.

One function per guarantee, used at every boundary rather than case by case:

- :func:`redact`: every known secret replaced by ``[redacted]``. Secrets are registered with
  :func:`add_secret` as harness reads them (API keys, configured header values, the password
  of the database URL, MCP servers' header variables) and from secret-looking environment
  variables (:func:`scan_environment`). Tool results, provider error bodies and every line
  the CLI prints pass through it.
- :func:`printable`: terminal control characters made visible. ANSI/OSC escape sequences
  (clear the screen, set the title, fake output), other C0/C1 controls, a lone carriage
  return and bidirectional overrides become ``\\x1b``-style text; newlines and tabs stay.
  Everything the CLI shows from a model or a tool passes through it (``run``, ``show``,
  ``report``).
- :func:`storable`: characters no database can keep (NUL: PostgreSQL's text refuses it; a
  lone surrogate: not encodable as UTF-8) replaced by U+FFFD, so a hostile reply is stored,
  not a crash.

This module imports nothing of harness: every layer may use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "MIN_SECRET_CHARS",
    "REDACTED",
    "add_secret",
    "forget_secret",
    "printable",
    "redact",
    "redact_data",
    "scan_environment",
    "shown",
    "storable",
]

REDACTED = "[redacted]"
# shorter values are too likely to occur in ordinary text to be cut out of it
MIN_SECRET_CHARS = 8
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")

_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first: a secret containing another goes whole


def add_secret(value: str | None) -> None:
    """Never store or show ``value`` again (ignored when shorter than ``MIN_SECRET_CHARS``)."""
    global _ordered
    if value and len(value) >= MIN_SECRET_CHARS and value not in _secrets:
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def forget_secret(value: str) -> None:
    """Stop treating ``value`` as a secret (tests that register made-up ones)."""
    global _ordered
    _secrets.discard(value)
    _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def scan_environment(environ: dict[str, str] | None = None) -> None:
    """Register the values of secret-looking environment variables (``*_API_KEY``,
    ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``, ``HARNESS_API_KEY``)."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.upper().endswith(_SECRET_SUFFIXES) or name == "HARNESS_API_KEY":
            add_secret(value)


def redact(text: str, also: Iterable[str] = ()) -> str:
    """``text`` with every known secret (and each of ``also``) replaced by ``[redacted]``."""
    for secret in (*also, *_ordered) if also else _ordered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_data(data: Any) -> Any:
    """``data`` (JSON-ready: dicts, lists, strings, numbers) with every string redacted."""
    if isinstance(data, str):
        return redact(data) if _ordered else data
    if isinstance(data, dict):
        return {k: redact_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v) for v in data]
    return data


# C0 controls but tab and newline, DEL, C1 controls; bidirectional embeddings, overrides and
# isolates (they reorder what a terminal shows: "Trojan source")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every terminal control character shown as an escape (``\\x1b``,
    ``\\u202e``; a lone carriage return as ``\\x0d``); newlines and tabs kept, ``\\r\\n``
    read as ``\\n``."""
    if text.isprintable():
        return text
    return _CONTROL.sub(_visible, text.replace("\r\n", "\n"))


def shown(text: str) -> str:
    """What a terminal may print of ``text``: redacted, then :func:`printable`."""
    return printable(redact(text))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD (nothing else changes)."""
    if "\x00" not in text:
        try:
            text.encode()  # refuses a lone surrogate; ~4x faster than the pattern's scan
        except UnicodeEncodeError:
            pass
        else:
            return text
    return _UNSTORABLE.sub("\ufffd", text)
