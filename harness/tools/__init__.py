"""Tools an agent may call: one ``Tool`` shape whatever the source.

``base``: ``Tool`` (a name, a description, a JSON schema derived from a typed signature, a
function), ``@tool``, the registry that runs a call and turns every failure into a result the
model reads, ``ToolSource`` (tools known at run time), and the loading of a workspace's
``tools/*.py``. ``schema``: the JSON schemas small models decode best. ``builtin``: files,
notes and ``delegate``; ``webfetch``. MCP servers as a source of tools: ``mcp_pool`` (the
configured servers, ``attach_mcp``), ``mcp`` (one server's life), ``mcp_adapt`` (names,
schemas, results), ``mcp_io``, ``mcp_check`` (agent files against live servers).
"""

from .base import (
    NotesStore,
    Tool,
    ToolContext,
    ToolRegistry,
    ToolResult,
    ToolSource,
    global_registry,
    load_workspace_tools,
    make_tool,
    tool,
)
from .builtin import (
    BUILTIN_TOOL_NAMES,
    DELEGATE_TOOL,
    builtin_tools,
    default_registry,
    delegate_spec,
    delegation,
)

__all__ = [
    "BUILTIN_TOOL_NAMES",
    "DELEGATE_TOOL",
    "NotesStore",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "ToolSource",
    "builtin_tools",
    "default_registry",
    "delegate_spec",
    "delegation",
    "global_registry",
    "load_workspace_tools",
    "make_tool",
    "tool",
]
