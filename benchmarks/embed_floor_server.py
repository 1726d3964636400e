"""The SDK's floor for an embed call: a minimal MCPServer whose ``embed`` tool has openarc-mcp's
arguments and output schema and returns a fixed 384-float vector without computing anything.

64 concurrent calls of it cost what the SDK (and its client) spend on 64 embed-shaped calls alone:
argument validation, dispatch, a 384-float structured result converted, checked and sent. A server
that added nothing to the SDK and the engine would take the raw batch plus this; ``raw ÷ (raw +
this floor)`` is the most any server on this SDK can reach for P3 on the machine it runs on.
Run as a script it serves over stdio: the SDK's stdio transport, or with ``--openarc-wire``
openarc-mcp's (which reads and writes bursts in chunks and serves context-free tool calls without
the SDK's per-request path, still through the SDK's tool objects and result serializer), with the
heap managed as the serving command manages it.
"""

from __future__ import annotations

import random
import sys
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from openarc_mcp.schema import EmbeddingUsage, EmbedResult
from openarc_mcp.transports.mcp_server import publish_inline_schemas

DIMENSIONS = 384


def _unit_vector(seed: int) -> list[float]:
    """A fixed unit vector of float32 values widened to Python floats, as GenAI returns them."""
    import numpy as np

    values = np.array([random.Random(seed).gauss(0, 1) for _ in range(DIMENSIONS)], dtype=np.float32)
    return [float(value) for value in values / np.linalg.norm(values)]


VECTOR = _unit_vector(7)

server = MCPServer("embed-floor")


@server.tool()
async def embed(
    texts: str | list[str],
    model: str | None = None,
    input_type: Literal["document", "query"] = "document",
    dimensions: Annotated[int | None, Field(ge=1)] = None,
) -> Annotated[CallToolResult, EmbedResult]:
    """Return one fixed vector per text (no model: the SDK's cost of an embed-shaped call)."""
    count = 1 if isinstance(texts, str) else len(texts)
    result = EmbedResult(
        embeddings=[VECTOR] * count,
        dimensions=DIMENSIONS,
        model=model or "floor",
        usage=EmbeddingUsage(prompt_tokens=20 * count),
    )
    return CallToolResult(
        content=[TextContent(type="text", text=f"{count} embedding(s) of {DIMENSIONS} dimensions")],
        structured_content=result.model_dump(mode="json"),
    )


publish_inline_schemas(server)  # the schemas openarc-mcp publishes, so clients check the same

if __name__ == "__main__":
    if "--openarc-wire" in sys.argv[1:]:
        import anyio

        from openarc_mcp import heap
        from openarc_mcp.transports.stdio import serve_server_on_stdio

        with heap.managing():  # as `openarc-mcp serve` does: full collections off the long-lived heap
            anyio.run(serve_server_on_stdio, server, 16 * 1024 * 1024)
    else:
        server.run()
