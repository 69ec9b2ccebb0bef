"""harness: a runtime for teams of LLM agents that work unattended overnight.

The public API is what ``__all__`` lists; everything else is internal and may change.
Workspace tools (``tools/*.py``) use ``@harness.tool``; tests use ``harness.testing``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agents import AgentSpec, Team
    from .errors import (
        BudgetExceeded,
        ConfigError,
        ControlSignal,
        HarnessError,
        LeaseLost,
        Problem,
        ProviderError,
        ResponseFormatError,
        RunFailed,
        ToolError,
    )
    from .messages import ChatMessage, ChatRequest, ToolCall, ToolSpec
    from .provider import Completion, OpenAIProvider, Provider
    from .runtime import Runtime, build_runtime
    from .schema import TaskStatus
    from .settings import Settings, Workspace, load_settings, load_workspace
    from .store import Store
    from .tools import Tool, ToolContext, ToolRegistry, ToolResult, tool
    from .usage import CallOutcome, CallRecord, Usage
    from .worker import Worker

# Names are imported on first use, so that ``harness --help`` and tools that only need
# ``@harness.tool`` do not pay for SQLAlchemy, Alembic and httpx at start-up.
_EXPORTS = {
    "AgentSpec": "agents",
    "BudgetExceeded": "errors",
    "CallOutcome": "usage",
    "CallRecord": "usage",
    "ChatMessage": "messages",
    "ChatRequest": "messages",
    "Completion": "provider",
    "ConfigError": "errors",
    "ControlSignal": "errors",
    "HarnessError": "errors",
    "LeaseLost": "errors",
    "OpenAIProvider": "provider",
    "Problem": "errors",
    "Provider": "provider",
    "ProviderError": "errors",
    "ResponseFormatError": "errors",
    "RunFailed": "errors",
    "Runtime": "runtime",
    "Settings": "settings",
    "Store": "store",
    "TaskStatus": "schema",
    "Team": "agents",
    "Tool": "tools",
    "ToolCall": "messages",
    "ToolContext": "tools",
    "ToolError": "errors",
    "ToolRegistry": "tools",
    "ToolResult": "tools",
    "ToolSpec": "messages",
    "Usage": "usage",
    "Worker": "worker",
    "Workspace": "settings",
    "build_runtime": "runtime",
    "load_settings": "settings",
    "load_workspace": "settings",
    "tool": "tools",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AgentSpec",
    "BudgetExceeded",
    "CallOutcome",
    "CallRecord",
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ConfigError",
    "ControlSignal",
    "HarnessError",
    "LeaseLost",
    "OpenAIProvider",
    "Problem",
    "Provider",
    "ProviderError",
    "ResponseFormatError",
    "RunFailed",
    "Runtime",
    "Settings",
    "Store",
    "TaskStatus",
    "Team",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "Worker",
    "Workspace",
    "__version__",
    "build_runtime",
    "load_settings",
    "load_workspace",
    "tool",
]
