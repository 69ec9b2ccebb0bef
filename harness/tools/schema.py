"""JSON schemas for tool arguments, the way small models decode best, and docstring parsing.

Pydantic's schema is post-processed: ``title`` keywords dropped, ``$ref`` inlined (only
recursive definitions stay under ``$defs``), object schemas closed with
``additionalProperties: false``, and ``properties``/``required`` always present at the top.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel

__all__ = ["json_schema", "parse_docstring"]

_SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns?|Raises|Yields?|Examples?|Notes?):\s*$"
)
_ARG_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into (first paragraph, {param: description from an ``Args:`` section})."""
    text = inspect.cleandoc(doc or "")
    if not text:
        return "", {}
    lines = text.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line.strip()):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    in_args, current, indent = False, None, 0
    for line in lines:
        stripped = line.strip()
        header = _SECTION_RE.match(line)
        if header:
            in_args = header.group(1) in ("Args", "Arguments", "Parameters", "Params")
            current = None
            continue
        if not in_args or not stripped:
            continue
        this_indent = len(line) - len(line.lstrip())
        if this_indent == 0:  # an unindented line ends the section
            in_args = False
            continue
        match = _ARG_RE.match(stripped)
        if match and (current is None or this_indent <= indent):
            current, indent = match.group(1), this_indent
            params[current] = match.group(2).strip()
        elif current is not None:
            params[current] = (params[current] + " " + stripped).strip()
    return " ".join(summary), params


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's ``title`` keywords (not properties that happen to be called "title")."""
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "patternProperties") and isinstance(value, dict):
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``$ref``s by their definitions; only recursive definitions stay in ``$defs``."""
    defs: dict[str, Any] = schema.pop("$defs", {})
    kept: dict[str, Any] = {}

    def walk(node: Any, stack: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[1]
            if name in defs and name not in stack:
                rest = {k: walk(v, stack) for k, v in node.items() if k != "$ref"}
                return {**walk(defs[name], stack | {name}), **rest}
            if name in defs and name not in kept:
                kept[name] = {}  # placeholder: stops infinite recursion
                kept[name] = walk(defs[name], frozenset({name}))
            return node
        return {k: walk(v, stack) for k, v in node.items()}

    out: dict[str, Any] = walk(schema, frozenset())
    if kept:
        out["$defs"] = kept
    return out


def _close_objects(node: Any) -> Any:
    """Add ``additionalProperties: false`` to object schemas with declared properties."""
    if isinstance(node, list):
        return [_close_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _close_objects(value) for key, value in node.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema a model is shown for ``model``: closed, title-free, refs inlined."""
    schema: dict[str, Any] = _close_objects(_inline_refs(_strip_titles(model.model_json_schema())))
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    return schema
