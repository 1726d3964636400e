"""Drive openarc-mcp from Python with the MCP SDK's client, over stdio, as a host does.

Run after `openarc-mcp models prepare smollm2-135m-instruct`:

    python examples/python_client.py "Why is the sky blue?"
"""

from __future__ import annotations

import json
import sys

import anyio
from mcp import Client, StdioServerParameters

MODEL = "smollm2-135m-instruct"


async def main(prompt: str) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "openarc_mcp", "serve"])
    async with Client(server) as client:
        tools = await client.list_tools()
        sys.stdout.write("tools: " + ", ".join(tool.name for tool in tools.tools) + "\n")

        async def show_partial_text(progress: float, total: float | None, message: str | None) -> None:
            sys.stdout.write(message or "")
            sys.stdout.flush()

        result = await client.call_tool(
            "generate",
            {"model": MODEL, "prompt": prompt, "max_tokens": 128, "temperature": 0},
            progress_callback=show_partial_text,
        )
        if result.is_error:
            raise SystemExit(f"\nerror: {result.content[0]}")
        data = result.structured_content or {}
        sys.stdout.write(
            f"\n\nfinish: {data['finish_reason']}, usage: {data['usage']}, metrics: {data['metrics']}\n"
        )

        # The same model held to a JSON Schema: the text is JSON that matches it.
        answer = await client.call_tool(
            "generate",
            {
                "model": MODEL,
                "prompt": "What is the capital of France? Answer in JSON with city and country.",
                "max_tokens": 60,
                "temperature": 0,
                "json_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                    "required": ["city", "country"],
                    "additionalProperties": False,
                },
            },
        )
        if answer.is_error:
            raise SystemExit(f"error: {answer.content[0]}")
        sys.stdout.write(f"as JSON: {json.loads((answer.structured_content or {})['text'])}\n")


if __name__ == "__main__":
    anyio.run(main, " ".join(sys.argv[1:]) or "What is the capital of France?")
