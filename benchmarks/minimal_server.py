"""The SDK's floor for the suite's P3, P4 and P5: a minimal MCPServer with one trivial tool, over stdio.

The tool is ``async`` on purpose: the SDK runs a plain ``def`` tool on a worker thread, which would
add a thread hop per call to the floor that openarc-mcp's (async) tools do not pay.
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("minimal")


@server.tool()
async def echo(text: str) -> str:
    """Return the text."""
    return text


if __name__ == "__main__":
    server.run()
