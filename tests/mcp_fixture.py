"""A real MCP server for tests, written with the SDK's low-level server API.

``python tests/mcp_fixture.py stdio`` serves over stdio; ``python tests/mcp_fixture.py http
--port N`` serves streamable HTTP on 127.0.0.1:N (``--token T`` requires ``Authorization:
Bearer T``) and prints ``listening http://127.0.0.1:N/mcp`` once it answers; ``mute`` never
says a word, nor reads its stdin. Its tools cover
what the client must handle: text, structured content, images, errors, a hang, a crash, a
huge result, names a model cannot use, an unfriendly schema, environment and headers.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from typing import Any

import anyio
import mcp_types as mt
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

LONG_NAME = "fetch_" + "very_" * 14 + "long_name"  # 81 characters: too long for a model
NASTY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "NastyArguments",
    "$defs": {
        "Node": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "kids": {"$ref": "#/$defs/Node"}},
        }
    },
    "properties": {
        "when": {"type": "string", "format": "date-time", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])"},
        "count": {"type": ["integer", "null"], "exclusiveMinimum": 0},
        "anything": {"description": "any JSON value"},
        "mode": {"oneOf": [{"const": "fast"}, {"const": "slow"}]},
        "both": {"allOf": [{"properties": {"x": {"type": "integer"}}, "required": ["x"]}]},
        "tree": {"$ref": "#/$defs/Node"},
    },
    "required": ["when", "not_a_property"],
}


def _schema(**props: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in props.items()},
        "required": list(props),
    }


TOOLS = [
    mt.Tool(name=name, description=about, input_schema=schema)
    for name, about, schema in [
        ("echo", "Echo the text back.", _schema(text="string")),
        ("add", "Add two integers.", _schema(a="integer", b="integer")),
        ("stats", "Structured content only.", _schema()),
        ("fail", "Report an error.", _schema(message="string")),
        ("hang", "Sleep.", _schema(seconds="number")),
        ("crash", "Exit mid-call.", _schema()),
        ("pid", "The server's process id.", _schema()),
        ("huge", "A long text.", _schema(chars="integer")),
        ("picture", "An image and a resource.", _schema()),
        ("env", "An environment variable.", _schema(name="string")),
        ("header", "A request header.", _schema(name="string")),
        ("dotted.name/tool", "A name with dots.", _schema()),
        (LONG_NAME, "A name too long.", _schema()),
        ("nasty", "An unfriendly schema.", NASTY_SCHEMA),
    ]
]


def _text(text: str, *, error: bool = False) -> mt.CallToolResult:
    return mt.CallToolResult(content=[mt.TextContent(text=text)], is_error=error)


async def list_tools(
    ctx: ServerRequestContext[Any], params: mt.PaginatedRequestParams | None
) -> mt.ListToolsResult:
    return mt.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: mt.CallToolRequestParams) -> Any:
    args = params.arguments or {}
    name = params.name
    if name == "echo":
        return _text(f"echo: {args['text']}")
    if name == "add":
        total = int(args["a"]) + int(args["b"])
        return mt.CallToolResult(
            content=[mt.TextContent(text=f'{{"sum": {total}}}')], structured_content={"sum": total}
        )
    if name == "stats":
        return mt.CallToolResult(content=[], structured_content={"runs": 3, "ok": True})
    if name == "fail":
        return _text(f"it went wrong: {args['message']}", error=True)
    if name == "hang":
        await anyio.sleep(float(args["seconds"]))
        return _text("woke up")
    if name == "crash":
        os._exit(3)
    if name == "pid":
        return _text(str(os.getpid()))
    if name == "huge":
        return _text("x" * int(args["chars"]))
    if name == "picture":
        png = base64.b64encode(b"\x89PNG" + b"\0" * 2044).decode()
        doc = mt.TextResourceContents(
            uri="file:///notes.txt", mime_type="text/plain", text="hi" * 50
        )
        return mt.CallToolResult(
            content=[
                mt.TextContent(text="a picture:"),
                mt.ImageContent(data=png, mime_type="image/png"),
                mt.EmbeddedResource(resource=doc),
            ]
        )
    if name == "env":
        return _text(f"{args['name']}={os.environ.get(args['name'], '<unset>')}")
    if name == "header":
        headers = getattr(ctx.request, "headers", {}) or {}
        return _text(f"{args['name']}: {headers.get(args['name'].lower(), '<none>')}")
    return _text(f"called {name}")


server: Server[Any] = Server("fixture", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def serve_http(port: int, token: str | None) -> None:
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and token is not None:
            got = dict(scope["headers"]).get(b"authorization", b"").decode()
            if got != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"no"})
                return
        await app(scope, receive, send)

    config = uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="warning")
    web = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(web.serve)
        while not web.started:
            await anyio.sleep(0.02)
        port = web.servers[0].sockets[0].getsockname()[1]
        print(f"listening http://127.0.0.1:{port}/mcp", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http", "mute"])  # mute: never answers
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token")
    parser.add_argument("--tag", help="ignored: marks the process for tests that look for it")
    args = parser.parse_args()
    if args.transport == "mute":
        time.sleep(3600)  # deaf to its stdin: only a signal stops it
    elif args.transport == "stdio":
        anyio.run(serve_stdio)
    else:
        anyio.run(serve_http, args.port, args.token)


if __name__ == "__main__":
    main()
