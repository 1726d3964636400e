"""Refusals of tool arguments that break their schema, in words an agent can act on.

The SDK's tool objects check ``tools/call`` arguments with pydantic and answer a failure with
pydantic's own report ("1 validation error for generateArguments", a line of the field, then
"Input should be ... [type=..., input_value=..., input_type=...]"). Every tool here is swapped for
``PlainRefusalTool``, which says the same in one line per argument ("'max_tokens' should be greater
than or equal to 1, got -1"). It is the SDK's tool otherwise: both paths that call tools (the SDK's
handler and ``direct_calls``) run it, and the SDK's log of rejected fields still reads the cause.
"""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from pydantic import ValidationError

from .validation import telling_errors

__all__ = ["PlainRefusalTool", "argument_problems", "plain_refusals"]

_SHOWN_PROBLEMS = 5
_SHOWN_VALUE_CHARS = 80


class PlainRefusalTool(Tool):
    """The SDK's ``Tool``, refusing arguments in one plain line per argument at fault."""

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        try:
            return await super().run(arguments, context, convert_result)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError) or not _of_arguments(cause):
                raise
            problems = argument_problems(cause, arguments)
            raise ToolError(f"Error executing tool {self.name}: {problems}") from cause


def plain_refusals(server: MCPServer) -> None:
    """Swap each of the server's tools for a ``PlainRefusalTool`` of the same fields."""
    tools = server._tool_manager._tools  # the SDK has no public way to replace a tool
    for name, tool in list(tools.items()):
        if not isinstance(tool, PlainRefusalTool):
            fields = {field: getattr(tool, field) for field in Tool.model_fields}
            tools[name] = PlainRefusalTool.model_construct(tool.model_fields_set, **fields)


def argument_problems(exc: ValidationError, arguments: dict[str, Any]) -> str:
    """What is wrong with ``arguments``, one clause per problem (the first five, and a count)."""
    problems = [_problem(_shown_path(parts), error) for parts, error in telling_errors(exc, arguments)]
    more = len(problems) - _SHOWN_PROBLEMS
    shown = "; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    return f"invalid arguments: {shown}"


def _of_arguments(exc: ValidationError) -> bool:
    """Whether pydantic's report is of a tool's arguments (the SDK's models are named so)."""
    return exc.title.endswith("Arguments")


def _shown_path(parts: tuple[str | int, ...]) -> str:
    """``('messages', 0, 'role')`` as ``messages[0].role``."""
    where = ""
    for part in parts:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "arguments"


def _problem(where: str, error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "missing":
        return f"'{where}' is required"
    subject, should, rule = message.partition(" should ")  # "Input should be ...", "String should ..."
    if should and " " not in subject:
        return f"'{where}' should {rule}, got {_shown(error.get('input'))}"
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"'{where}': {message} (got {_shown(error.get('input'))})"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[: _SHOWN_VALUE_CHARS - 3] + "..."
