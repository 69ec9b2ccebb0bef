"""harness: a runtime for teams of LLM agents that work unattended overnight.

The public API is what ``__all__`` lists; everything else is internal and may change.
Workspace tools (``tools/*.py``) use ``@harness.tool``; tests use ``harness.testing``.

Names are imported on first use, so that ``harness --help`` and tools that only need
``@harness.tool`` do not pay for SQLAlchemy, Alembic and httpx at start-up. ``_EXPORTS`` is
the one list (name -> module); the block below repeats it for type checkers only, and a test
keeps the two equal.
"""

import typing as _typing
from importlib import import_module as _import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AgentSpec": "agents",
    "Budget": "usage",
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
    "TaskStatus": "store",
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
    "open_runtime": "runtime",
    "tool": "tools",
}

__all__ = ["__version__", *_EXPORTS]

if _typing.TYPE_CHECKING:
    from .agents import AgentSpec as AgentSpec
    from .agents import Team as Team
    from .errors import BudgetExceeded as BudgetExceeded
    from .errors import ConfigError as ConfigError
    from .errors import ControlSignal as ControlSignal
    from .errors import HarnessError as HarnessError
    from .errors import LeaseLost as LeaseLost
    from .errors import Problem as Problem
    from .errors import ProviderError as ProviderError
    from .errors import ResponseFormatError as ResponseFormatError
    from .errors import RunFailed as RunFailed
    from .errors import ToolError as ToolError
    from .messages import ChatMessage as ChatMessage
    from .messages import ChatRequest as ChatRequest
    from .messages import ToolCall as ToolCall
    from .messages import ToolSpec as ToolSpec
    from .provider import Completion as Completion
    from .provider import OpenAIProvider as OpenAIProvider
    from .provider import Provider as Provider
    from .runtime import Runtime as Runtime
    from .runtime import build_runtime as build_runtime
    from .runtime import open_runtime as open_runtime
    from .settings import Settings as Settings
    from .settings import Workspace as Workspace
    from .settings import load_settings as load_settings
    from .settings import load_workspace as load_workspace
    from .store import Store as Store
    from .store import TaskStatus as TaskStatus
    from .tools import Tool as Tool
    from .tools import ToolContext as ToolContext
    from .tools import ToolRegistry as ToolRegistry
    from .tools import ToolResult as ToolResult
    from .tools import tool as tool
    from .usage import Budget as Budget
    from .usage import CallOutcome as CallOutcome
    from .usage import CallRecord as CallRecord
    from .usage import Usage as Usage
    from .worker import Worker as Worker


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(_import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
