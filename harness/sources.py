"""What a user wrote, read defensively: files and ``HARNESS_*`` environment overrides.

:func:`read_text` reads a configuration file (an agent, ``harness.toml``): a regular file (a
folder, FIFO or device in its place is refused at once, never read: a FIFO would hang), at
most ``MAX_FILE_BYTES``, UTF-8 with an optional byte-order mark. Every failure is a
``ConfigError`` naming the file and saying what to do.

:func:`overrides` turns the environment into :class:`Override`s for a pydantic settings model:
``HARNESS_<KEY>`` and ``HARNESS_<SECTION>__<KEY>`` (lower-cased), each with the variable it
came from, so an error names the variable, and a variable that names no key is reported
(``unknown``) instead of being applied. A value is JSON when the key is not text and the
value parses as JSON (``8``, ``false``, ``{"X-Org": "acme"}``), else the string as given.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import types
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from .errors import ConfigError, Problem

__all__ = [
    "ENV_PREFIX",
    "MAX_FILE_BYTES",
    "Override",
    "did_you_mean",
    "overrides",
    "read_text",
]

ENV_PREFIX = "HARNESS_"
MAX_FILE_BYTES = 1_000_000


def did_you_mean(word: str, choices: Collection[str]) -> str | None:
    """``did you mean `x`?`` for the closest of ``choices``, when one is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def read_text(path: Path) -> str:
    """The text of the configuration file ``path`` (a leading BOM dropped); ConfigError
    when it is not a regular file, too large, unreadable or not UTF-8."""
    file = str(path)
    try:
        info = os.stat(path)  # follows a link to a file, as reading does
    except OSError as exc:
        raise ConfigError(Problem(file, f"cannot read: {exc.strerror or exc}")) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(Problem(file, f"is {kind}; expected a text file"))
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(Problem(file, f"is {info.st_size:,} bytes; the limit is 1 MB"))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(Problem(file, f"cannot read: {exc.strerror or exc}")) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        msg = f"is not UTF-8 text (byte {exc.start + 1}); save it as UTF-8"
        raise ConfigError(Problem(file, msg, line=line)) from None


@dataclass(frozen=True)
class Override:
    """One environment variable applied to the settings: ``path`` (lower-cased keys) gets
    ``value``."""

    variable: str
    path: tuple[str, ...]
    value: Any

    @property
    def field(self) -> str:
        return ".".join(self.path)


def overrides(
    environ: Mapping[str, str], model: type[BaseModel], *, ignore: Collection[str] = ()
) -> tuple[list[Override], list[Problem]]:
    """The ``HARNESS_*`` variables of ``environ`` that name a key of ``model`` (sorted by
    name), and a warning for each one that names none (``ignore``: variables harness reads
    for another purpose)."""
    found: list[Override] = []
    unknown: list[Problem] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in ignore or name == ENV_PREFIX:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        target = _target(model, path)
        if target is _MISSING:
            unknown.append(_unknown(name, path, model))
            continue
        found.append(Override(name, path, raw if _is_text(target) else _json_or_text(raw)))
    return found, unknown


def _unknown(name: str, path: tuple[str, ...], model: type[BaseModel]) -> Problem:
    hint = did_you_mean(path[0], model.model_fields) if len(path) == 1 else None
    message = "names no setting; ignored" + (f" ({hint})" if hint else "")
    return Problem(f"environment variable {name}", message, ".".join(path))


_MISSING = object()


def _target(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    """The type annotation of the setting ``path`` names in ``model`` (``_MISSING``)."""
    node: Any = model
    for part in path:
        node = _optional(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part)
            if field is None:
                return _MISSING
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]  # any key names an entry: a provider, a header...
        else:
            return _MISSING  # a scalar or a list has no keys below it
    return node


def _optional(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_text(annotation: Any) -> bool:
    inner = _optional(annotation)
    if inner is str:
        return True
    return get_origin(inner) is Literal and all(isinstance(a, str) for a in get_args(inner))


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
