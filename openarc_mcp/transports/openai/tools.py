"""Function calling for ``POST /v1/chat/completions``: ``tools``, ``tool_choice``, tool calls back.

Small local models seldom have a tool-call format of their own that can be relied on, so
openarc-mcp uses one format for every model and holds the model to it with JSON Schema
constrained generation (``engines/structured.py``): the functions are described in a system
message, and the reply must be ``{"tool_calls": [{"name": ..., "arguments": {...}}]}`` or, when the
model may answer instead (``tool_choice: "auto"``), ``{"content": "..."}``. Each function's
``arguments`` are held to its ``parameters`` schema; the keywords the engine does not hold to
(numeric bounds, ``multipleOf``) are left out of the constraint and checked on the arguments
afterwards, so a call that breaks them is an error naming it (a 500: the model's fault, not the
caller's), never passed on. Earlier calls and
their results in the chat are rendered in the same format, so the model sees its own calls.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import from_json

from ...engines.structured import checked_json_schema, first_mismatch, subschemas
from ...errors import OpenArcError
from ...schema import UNENFORCED_KEYWORDS
from .errors import INVALID_MODEL_OUTPUT, APIError

logger = logging.getLogger(__name__)

__all__ = [
    "ToolCallIn",
    "ToolCalls",
    "ToolChoice",
    "ToolDefinition",
    "ToolUse",
    "cut_answer",
    "made_calls",
    "rendered_calls",
    "rendered_result",
    "tool_use",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ANSWER_OPENING = re.compile(r'\s*\{\s*"content"\s*:\s*"')
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
MAX_CALLS = 8
"""Calls in one reply when parallel calls are allowed (small models otherwise repeat a call until
max_tokens)."""


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str
    parsed_arguments: Any = Field(default=None, description="Of a reply (the client's parse()): unused.")


class ToolCallIn(BaseModel):
    """A call the assistant made earlier in the chat."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"]
    function: FunctionCall
    index: int | None = Field(default=None, description="Of a streamed reply: unused.")


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
ToolCalls = Annotated[list[ToolCallIn], Field(min_length=1, max_length=128)]


@dataclass(frozen=True)
class ToolUse:
    """How this request may call functions: the instructions, the reply's schema, reading the reply."""

    functions: dict[str, FunctionDefinition]
    allowed: tuple[str, ...]  # the functions the reply may call
    may_answer: bool  # the reply may be a plain answer instead ("auto")
    parallel: bool

    def instructions(self) -> str:
        """The system message text that describes the functions and the reply's format."""
        described = "\n".join(
            json.dumps(
                {
                    "name": name,
                    "description": self.functions[name].description or "",
                    "parameters": self.functions[name].parameters or _NO_PARAMETERS,
                },
                ensure_ascii=False,
            )
            for name in self.allowed
        )
        calls = 'To call functions, reply {"tool_calls": [{"name": <function name>, "arguments": {...}}]}'
        calls += f" with at most {MAX_CALLS} calls" if self.parallel else " with exactly one call"
        answer = (
            '; to answer the user directly instead, reply {"content": <your answer>}'
            if self.may_answer
            else ""
        )
        return f"You can call these functions:\n{described}\n\nReply with one JSON object. {calls}{answer}."

    def reply_schema(self) -> dict[str, Any]:
        """The JSON Schema every reply is held to (each function's parameters under ``$defs``)."""
        definitions: dict[str, Any] = {}
        options = []
        for name in self.allowed:
            arguments = _placed(
                _enforceable(self.functions[name].parameters or _NO_PARAMETERS), name, definitions
            )
            options.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": arguments},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
            )
        call = {"anyOf": options}
        most = MAX_CALLS if self.parallel else 1
        calls = {"type": "array", "items": call, "minItems": 1, "maxItems": most}
        calling = {
            "type": "object",
            "properties": {"tool_calls": calls},
            "required": ["tool_calls"],
            "additionalProperties": False,
        }
        root: dict[str, Any] = {"$defs": definitions} if definitions else {}
        if not self.may_answer:
            return calling | root
        answering = {
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": False,
        }
        return {"anyOf": [calling, answering]} | root

    def read_reply(self, text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
        """(content, tool calls in OpenAI's shape) from a reply that ended by itself."""
        reply = _whole_characters(json.loads(text))  # JSON escapes can spell half a surrogate pair
        if "content" in reply:
            return str(reply["content"]), None
        calls = []
        for call in reply["tool_calls"]:
            self._check_arguments(call["name"], call["arguments"])
            arguments = json.dumps(call["arguments"], ensure_ascii=False)
            calls.append(
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": arguments},
                }
            )
        return None, calls

    def _check_arguments(self, name: str, arguments: Any) -> None:
        """The arguments against the function's whole schema (the keywords left out of the constraint)."""
        problem = first_mismatch(arguments, self.functions[name].parameters or _NO_PARAMETERS)
        if problem is not None:
            message, path = problem
            where = "/".join(str(part) for part in path) or "the top"
            logger.warning("the model's call to %r broke its parameters at %s: %s", name, where, message)
            raise APIError(
                500,
                f"The model produced invalid content: its call to '{name}' breaks the function's "
                f"parameters: {message} (at {where}). The engine holds a call to its schema except for "
                f"{', '.join(UNENFORCED_KEYWORDS)}, which are checked after generation: list allowed "
                "values with enum, or check such values in the function",
                None,
                INVALID_MODEL_OUTPUT,
            )


def tool_use(
    tools: list[ToolDefinition] | None, choice: ToolChoice | None, parallel: bool | None
) -> ToolUse | None:
    """What the request allows, checked; ``None`` when the reply is plain text (no tools, or "none")."""
    if not tools:
        if choice not in (None, "none"):
            raise APIError(400, "'tool_choice' needs 'tools'", "tool_choice")
        return None
    functions: dict[str, FunctionDefinition] = {}
    for index, tool in enumerate(tools):
        _check_parameters(tool.function.parameters, index)
        name = tool.function.name
        if not _NAME.match(name):
            raise APIError(
                400,
                f"function name {name!r}: use 1-64 of a-z, A-Z, 0-9, _ and -",
                f"tools.{index}.function.name",
            )
        if name in functions:
            raise APIError(400, f"two functions are named {name!r}", f"tools.{index}.function.name")
        functions[name] = tool.function
    if choice == "none":
        return None
    allowed = tuple(functions)
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in functions:
            raise APIError(
                400, f"tool_choice names '{choice.function.name}', which is not in tools", "tool_choice"
            )
        allowed = (choice.function.name,)
    # the whole reply's schema is prepared where every schema is (the engine); its errors name tools
    return ToolUse(functions, allowed, may_answer=choice in (None, "auto"), parallel=parallel is not False)


def _check_parameters(parameters: dict[str, Any] | None, index: int) -> None:
    """A function's ``parameters`` must be a JSON Schema whose references stay inside it."""
    if parameters is None:
        return
    try:
        checked_json_schema(parameters, nested=True)
    except OpenArcError as exc:
        message = str(exc).replace("json_schema", "parameters", 1)
        raise APIError(400, message, f"tools.{index}.function.parameters") from exc


def cut_answer(text: str) -> str | None:
    """The answer in a reply cut short inside ``{"content": "...``, as far as it got; ``None`` for a
    reply cut elsewhere (inside a call: it is returned as its raw text)."""
    opening = _ANSWER_OPENING.match(text)
    if opening is None:
        return None
    rest, decoder = text[opening.end() :], json.JSONDecoder()
    for cut in range(8):  # back off a partial escape (\u12) at the end
        kept = '"' + rest[: len(rest) - cut]
        for candidate in (kept, kept + '"'):
            try:
                return str(_whole_characters(decoder.raw_decode(candidate)[0]))
            except ValueError:
                continue
    return None


def _whole_characters(value: Any) -> Any:
    """``value`` with each lone surrogate (half of a pair, which no UTF-8 text can carry) as U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_whole_characters(item) for item in value]
    if isinstance(value, dict):
        return {_whole_characters(key): _whole_characters(item) for key, item in value.items()}
    return value


def made_calls(tool_calls: list[ToolCallIn], index: int) -> list[dict[str, Any]]:
    """An earlier assistant message's calls as the model is asked to write them (name, arguments)."""
    calls = []
    for position, call in enumerate(tool_calls):
        param = f"messages.{index}.tool_calls.{position}.function.arguments"
        try:
            arguments = from_json(call.function.arguments or "{}")  # refuses escaped lone surrogates
        except ValueError as exc:
            raise APIError(400, f"arguments must be a JSON object as a string ({exc})", param) from exc
        if not isinstance(arguments, dict):
            raise APIError(400, "arguments must be a JSON object as a string", param)
        calls.append({"name": call.function.name, "arguments": arguments})
    return calls


def rendered_calls(calls: list[dict[str, Any]]) -> str:
    """``made_calls`` as the text of the assistant's turn."""
    return json.dumps({"tool_calls": calls}, ensure_ascii=False)


def rendered_result(call: dict[str, Any], result: str) -> str:
    """A tool message's text as the model reads it: the call it answers (of ``made_calls``), then
    the result, so that answers to several calls (of one function, too) stay told apart."""
    return json.dumps({"call": call, "result": result}, ensure_ascii=False)


def _placed(parameters: dict[str, Any], function: str, definitions: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``parameters`` (a copy of its own) placed whole at ``$defs/<function>`` of the
    reply's schema, its local ``$ref``s (``#``, ``#/$defs/...``, ``#/properties/...``) pointed there."""
    parameters.pop("$schema", None)
    _rewrite_refs(parameters, f"#/$defs/{function}")
    definitions[function] = parameters
    return {"$ref": f"#/$defs/{function}"}


def _rewrite_refs(node: Any, root: str) -> None:
    """Prefix every local ``$ref`` under ``node`` (a pointer into its own document) with ``root``."""
    if isinstance(node, list):
        for item in node:
            _rewrite_refs(item, root)
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            node["$ref"] = root + ref[1:]
        for key, value in node.items():
            if key != "$ref":
                _rewrite_refs(value, root)


def _enforceable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without the keywords the engine does not hold to (checked after generation)."""
    copied = copy.deepcopy(schema)
    _drop_unenforced(copied)
    return copied


def _drop_unenforced(node: Any) -> None:
    if not isinstance(node, dict):
        return
    for keyword in UNENFORCED_KEYWORDS:
        node.pop(keyword, None)
    for child, _ in subschemas(node, "#"):
        _drop_unenforced(child)
