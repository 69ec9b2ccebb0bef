"""MCP tools as harness tools: names a model accepts, schemas a grammar can enforce, text results.

- **Names.** A server's tool ``t`` is ``<server>__<t>``, with every character outside
  ``[A-Za-z0-9_-]`` replaced by ``_`` (OpenAI's rule for tool names). A name longer than 64
  characters keeps its first 55 and ends with ``_`` and 8 hex digits of the SHA-256 of the
  unsanitised name; so does a name that would collide with another tool of the same server.
  The same listing always gives the same names.
- **Schemas.** The server's input schema is reduced to the JSON-schema subset that both
  native tool calling and grammar-constrained decoding (llama.cpp's ``response_format``)
  accept: ``$ref`` inlined (a recursive one becomes ``{"type": "object"}``), ``oneOf`` as
  ``anyOf``, ``allOf`` merged, type lists as ``anyOf``, an untyped value as a list of every
  type, objects closed, ``required`` limited to declared properties, titles dropped. Keywords a
  grammar cannot enforce (``pattern``, ``format``, exclusive bounds, huge repetition counts)
  move into the description, so a model still reads them.
- **Results.** Text blocks joined by newlines; structured content as JSON unless a text block
  already carries it; images, audio and resources as a one-line note with type and size.
  ``isError`` results raise :class:`~harness.errors.ToolError` with the server's text.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import mcp_types as mt

from ..errors import ToolError
from .base import Tool

__all__ = [
    "MAX_NAME",
    "grammar_safe",
    "mcp_tool",
    "result_text",
    "selected",
    "tool_name",
    "tool_names",
]

MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ANY = ["string", "number", "boolean", "object", "array", "null"]
_MAX_DEPTH = 16
_MAX_REPEAT = 256  # larger min/max lengths and item counts make grammars explode
_MAX_DESCRIPTION = 2000
_KEPT = ("description", "default", "minimum", "maximum")
_NOTED = {"format": "format", "pattern": "pattern", "exclusiveMinimum": "greater than"}
_NOTED |= {"exclusiveMaximum": "less than", "multipleOf": "a multiple of"}
_REPEATS = ("minLength", "maxLength", "minItems", "maxItems")


# -- names -------------------------------------------------------------------------------------


def _hashed(name: str, raw: str) -> str:
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]}_{digest}"


def tool_name(server: str, tool: str) -> str:
    """The name a model sees for ``server``'s tool ``tool`` (at most 64 safe characters)."""
    name = f"{server}__{_UNSAFE.sub('_', tool)}"
    return name if len(name) <= MAX_NAME else _hashed(name, f"{server}__{tool}")


def tool_names(server: str, tools: Iterable[str]) -> dict[str, str]:
    """``{model name: server's tool name}`` for a listing. When two tools sanitise to one
    name, each whose name had to change gets a hash suffix; the others keep theirs."""
    raw = sorted(set(tools))
    first = {t: tool_name(server, t) for t in raw}
    counts: dict[str, int] = {}
    for name in first.values():
        counts[name] = counts.get(name, 0) + 1
    out: dict[str, str] = {}
    for t in raw:
        name = first[t]
        if counts[name] > 1 and name != f"{server}__{t}":
            name = _hashed(name, f"{server}__{t}")
        out[name] = t
    return out


def selected(name: str, include: Collection[str] | None, exclude: Collection[str]) -> bool:
    """Whether the server's tool ``name`` passes a server's ``include`` / ``exclude`` lists
    (names or fnmatch patterns; no ``include`` means every tool)."""
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


# -- schemas -----------------------------------------------------------------------------------


def grammar_safe(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """``schema`` (a tool's input schema) as a closed object schema in the safe subset."""
    raw = dict(schema or {})
    defs = {**raw.get("definitions", {}), **raw.get("$defs", {})}
    node = _Adapter(defs).node(raw, frozenset(), 0)
    if node.get("type") != "object":
        node = {"type": "object", "description": node.get("description")}
        node = {k: v for k, v in node.items() if v is not None}
    node.setdefault("properties", {})
    node.setdefault("required", [])
    node.setdefault("additionalProperties", False)
    return node


class _Adapter:
    """One schema's conversion; ``defs`` are its ``$defs`` (and draft-07 ``definitions``)."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self.defs = defs

    def node(self, schema: Any, refs: frozenset[str], depth: int) -> dict[str, Any]:
        if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
            return {"type": list(_ANY)}  # ``true``, ``false``, or too deep: any value
        schema, refs = self._resolved(schema, refs)
        ref = schema.get("$ref")
        if isinstance(ref, str):  # a recursive definition stops here; an unknown one is open
            recursive = ref.rsplit("/", 1)[-1] in refs
            return _with_notes({"type": "object" if recursive else list(_ANY)}, schema)
        if "allOf" in schema:
            return self.node(_merged(schema), refs, depth + 1)
        choices = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(choices, list) and choices:
            return self._union(schema, choices, refs, depth)
        types = schema.get("type")
        if isinstance(types, list) and len(types) != 1:
            about = {k: v for k, v in schema.items() if k in ("description", *_NOTED)}
            shape = {k: v for k, v in schema.items() if k not in about}
            branches = [{**shape, "type": t} for t in types] or [{}]
            return self._union(about, branches, refs, depth)
        return self._typed(schema, types[0] if isinstance(types, list) else types, refs, depth)

    def _resolved(
        self, schema: Mapping[str, Any], refs: frozenset[str]
    ) -> tuple[Mapping[str, Any], frozenset[str]]:
        """``schema`` with its local ``$ref`` chain inlined (sibling keywords win), and the
        definitions entered so far; a ``$ref`` stays when it is recursive or unknown."""
        while isinstance(ref := schema.get("$ref"), str):
            name = ref.rsplit("/", 1)[-1]
            target = self.defs.get(name)
            if name in refs or not isinstance(target, Mapping):
                break
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema, refs = {**target, **rest}, refs | {name}
        return schema, refs

    def _union(
        self, schema: Mapping[str, Any], choices: list[Any], refs: frozenset[str], depth: int
    ) -> dict[str, Any]:
        branches = [self.node(c, refs, depth + 1) for c in choices]
        if len(branches) == 1:
            return _with_notes(branches[0], schema)
        return _with_notes({"anyOf": branches}, schema)

    def _typed(
        self, schema: Mapping[str, Any], kind: Any, refs: frozenset[str], depth: int
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "const" in schema:
            out["const"] = schema["const"]
        elif isinstance(schema.get("enum"), list) and schema["enum"]:
            out["enum"] = list(schema["enum"])
        kind = kind or _infer(schema)
        if kind not in (*_ANY, "integer", None) or (kind is None and not out):
            kind = list(_ANY)
        if kind is not None:
            out["type"] = kind
        if kind == "object":
            out.update(self._object(schema, refs, depth))
        elif kind == "array" and "items" in schema:
            items = schema["items"]
            items = {"anyOf": items} if isinstance(items, list) else items
            out["items"] = self.node(items, refs, depth + 1)
        out.update({k: schema[k] for k in _REPEATS if _small(schema.get(k))})
        return _with_notes(out, schema)

    def _object(
        self, schema: Mapping[str, Any], refs: frozenset[str], depth: int
    ) -> dict[str, Any]:
        props = schema.get("properties")
        out: dict[str, Any] = {}
        if isinstance(props, Mapping):
            out["properties"] = {str(k): self.node(v, refs, depth + 1) for k, v in props.items()}
            required = schema.get("required")
            names = required if isinstance(required, list) else []
            out["required"] = [n for n in names if n in out["properties"]]
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            out["additionalProperties"] = self.node(extra, refs, depth + 1)
        elif extra is True and "properties" in out:
            out["additionalProperties"] = True
        elif "properties" in out or extra is False:
            out["additionalProperties"] = False
        return out


def _infer(schema: Mapping[str, Any]) -> str | None:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _small(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_REPEAT


def _merged(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``allOf`` folded into one schema: properties and ``required`` united, the first
    part's value kept for any other keyword."""
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    parts = [p for p in schema.get("allOf") or [] if isinstance(p, Mapping)]
    for part in parts:
        for key, value in part.items():
            if key == "properties" and isinstance(value, Mapping):
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                out["required"] = [*out.get("required", []), *value]
            else:
                out.setdefault(key, value)
    return out


def _with_notes(node: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with the schema's description, default and bounds, and a note in the
    description for each constraint the grammar does not enforce."""
    for key in _KEPT:
        if key in schema and key not in node:
            node[key] = schema[key]
    text = node.get("description")
    notes = [f"{label} {schema[key]}" for key, label in _NOTED.items() if key in schema]
    notes += [f"{key} {schema[key]}" for key in _REPEATS if key in schema and key not in node]
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else f"({'; '.join(notes)})"
    if isinstance(text, str) and text:
        node["description"] = text[:_MAX_DESCRIPTION]
    else:
        node.pop("description", None)
    return node


# -- results and tools -------------------------------------------------------------------------


def _size(data: str) -> str:
    n = len(data) * 3 // 4 - data[-2:].count("=")  # base64 -> bytes
    return f"{n} bytes" if n < 10_000 else f"{n / 1024:.0f} KiB"


def _block_text(block: mt.ContentBlock) -> str:
    if isinstance(block, mt.TextContent):
        return block.text
    if isinstance(block, mt.ImageContent | mt.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_size(block.data)}]"
    if isinstance(block, mt.EmbeddedResource):
        res = block.resource
        mime = res.mime_type or "unknown type"
        if isinstance(res, mt.TextResourceContents):
            return f"[resource {res.uri}: {mime}, {len(res.text)} characters]"
        return f"[resource {res.uri}: {mime}, {_size(res.blob)}]"
    size = f", {block.size} bytes" if block.size is not None else ""
    return f"[resource link {block.uri}: {block.mime_type or 'unknown type'}{size}]"


def _carries(blocks: list[mt.ContentBlock], structured: Any) -> bool:
    """Whether a text block already is ``structured`` as JSON (the spec's text copy)."""
    for block in blocks:
        if isinstance(block, mt.TextContent):
            try:
                if json.loads(block.text) == structured:
                    return True
            except ValueError:
                continue
    return False


def result_text(result: mt.CallToolResult) -> str:
    """The text a model reads for ``result``; raises ToolError when it is an error."""
    parts = [_block_text(b) for b in result.content]
    structured = result.structured_content
    if structured is not None and not _carries(result.content, structured):
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts)
    if result.is_error:
        raise ToolError(text or "the tool reported an error and said nothing more")
    return text


def mcp_tool(
    server: str,
    name: str,
    listed: mt.Tool,
    call: Callable[[str, dict[str, Any]], Awaitable[str]],
) -> Tool:
    """The :class:`Tool` ``name`` for ``server``'s listed tool; ``call(tool, arguments)``
    runs it on the server and returns the text for the model (arguments pass unchanged:
    the server validates them)."""

    async def run(**arguments: Any) -> str:
        return await call(listed.name, arguments)

    description = listed.description or listed.title or ""
    return Tool(
        name=name,
        description=description[:_MAX_DESCRIPTION],
        parameters=grammar_safe(listed.input_schema),
        fn=run,
        origin=f"MCP server {server!r} (config/harness.toml: mcp.servers.{server})",
    )
