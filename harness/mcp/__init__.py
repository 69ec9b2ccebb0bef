"""harness as an MCP server (``harness mcp serve``): any MCP client can hand it work.

``server``: the tools (``submit_run``, ``run_status``, ``list_runs``, ``show_run``,
``cancel_run``, ``ledger``), each a thin call to the query functions the CLI uses; ``serve``:
stdio, or streamable HTTP behind an optional bearer token, optionally with a worker in the
same process. (The MCP *client*, servers as tools for agents, lives in ``harness/tools``.)
"""

from .serve import serve
from .server import build_server

__all__ = ["build_server", "serve"]
