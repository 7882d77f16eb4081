#!/usr/bin/env python3
"""An MCP client for tests/mcp.rs, on the official MCP Python SDK (PyPI `mcp`).

    mcp_client.py http  <url> <token> <calls.json>
    mcp_client.py stdio <command> <calls.json> [arg ...]   # the server's command line

Connects (Streamable HTTP with `Authorization: Bearer <token>`, or stdio by launching
the command), initializes, lists the tools, makes each call of <calls.json> (a JSON array
of {"tool": name, "args": {...}}) in order, and prints one JSON object on stdout:

    {"server": {...initialize result...}, "tools": [...], "calls": [result or {"error": text}]}

A call that the server answers with a JSON-RPC error is {"error": "<message>"}; a tool
result is the CallToolResult as the wire has it (content, structuredContent, isError).
Works with SDK 1.x and 2.x (their HTTP client entry points differ).
"""

import asyncio
import contextlib
import json
import sys

from mcp import ClientSession


def dump(model):
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


@contextlib.asynccontextmanager
async def http_streams(url, token):
    headers = {"Authorization": f"Bearer {token}"}
    try:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client
    except ImportError:  # SDK 1.x before streamable_http_client
        streamable_http_client = None
    if streamable_http_client is not None:
        async with create_mcp_http_client(headers=headers) as client:
            async with streamable_http_client(url, http_client=client) as streams:
                yield streams[0], streams[1]
    else:
        from mcp.client.streamable_http import streamablehttp_client

        async with streamablehttp_client(url, headers=headers) as streams:
            yield streams[0], streams[1]


@contextlib.asynccontextmanager
async def stdio_streams(command, args):
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=command, args=args, env={"RUST_LOG": "info"})
    async with stdio_client(params) as streams:
        yield streams[0], streams[1]


async def run(streams, calls):
    async with streams as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            out = {"server": dump(init), "tools": [dump(t) for t in tools.tools], "calls": []}
            for c in calls:
                try:
                    r = await session.call_tool(c["tool"], c.get("args", {}))
                    out["calls"].append(dump(r))
                except Exception as e:  # McpError (1.x) / MCPError (2.x): a JSON-RPC error
                    out["calls"].append({"error": str(e)})
            return out


def main():
    mode = sys.argv[1]
    if mode == "http":
        url, token, calls = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        streams = http_streams(url, token)
    elif mode == "stdio":
        command, calls, args = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
        streams = stdio_streams(command, args)
    else:
        sys.exit(f"unknown mode {mode!r}: http or stdio")
    out = asyncio.run(run(streams, calls))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
