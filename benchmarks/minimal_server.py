"""The SDK's floor for the suite's P4 and P5: a minimal MCPServer with one trivial tool, over stdio."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("minimal")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


if __name__ == "__main__":
    server.run()
