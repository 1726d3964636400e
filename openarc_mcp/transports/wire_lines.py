"""One line of the stdio wire: the JSON-RPC message it holds, or the error answer owed for it.

Every line a host sends is owed something: a valid message goes on to be served, anything else gets
``-32700 Parse error`` or ``-32600 Invalid Request``, with the request's id whenever it can be found
(a host matches answers to its requests by id: an answer with a null id leaves its call waiting).
No line, however odd (nested thousands deep, over the length limit, not UTF-8), may raise out of here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mcp_types
from pydantic import ValidationError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "UNENCODABLE",
    "Oversized",
    "Parsed",
    "Withheld",
    "error_answer",
    "oversized_answer",
    "parse_line",
    "top_level_id",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
UNENCODABLE = "Internal error: the answer could not be encoded as JSON (the server's log says why)"
"""The message of the error sent for an answer that cannot be encoded (both stdio paths)."""
HEAD_BYTES = 4096
"""How much of a line over the limit is kept to find its id (clients write ``id`` before ``params``)."""

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_KEY_END = re.compile(r"\s*:")
_ID_VALUE = re.compile(r'\s*:\s*("(?:[^"\\]|\\.)*"|-?\d{1,19})\s*[,}]')


@dataclass(frozen=True)
class Oversized:
    """A line over the length limit: discarded as it arrived, but for its first ``HEAD_BYTES``."""

    head: bytes


@dataclass(frozen=True)
class Withheld:
    """An invalid notification or response: nothing may be answered for it (``reason`` is logged).

    A notification has no id to answer; a response's id is one of the server's own requests, and an
    error sent back under it could be taken for the answer to a request of the host's with that id."""

    reason: str


Parsed = mcp_types.JSONRPCMessage | dict[str, Any] | Withheld
"""A valid message, the error response owed for a line, or a line that is owed nothing."""


def parse_line(line: str) -> Parsed:
    """The JSON-RPC message a line holds, the error response owed for it (its id may be null), or
    ``Withheld`` when it is invalid but may not be answered.

    Valid requests are parsed once; the line is looked at again only when it fails, or when it
    parsed as a notification (a request with an invalid id parses as one, and is owed an error).
    """
    try:
        message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        return _diagnose(line, exc)
    if isinstance(message, mcp_types.JSONRPCNotification) and _names_an_id(line):
        return _diagnose(line, None)
    return message


def _names_an_id(line: str) -> bool:
    try:
        return "id" in _loads(line)
    except ValueError:
        return True  # cannot tell: the diagnosis says what is wrong


def error_answer(ident: str | int | None, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error response."""
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


def oversized_answer(line: Oversized, limit: int) -> dict[str, Any] | Withheld:
    """The answer owed for a line over ``limit`` bytes, with its request's id when its head shows it;
    ``Withheld`` when its head shows a response (a ``result`` or ``error`` and no ``method``: its
    id is one of the server's own, never to be answered)."""
    head = line.head.decode("utf-8", errors="replace")
    keys = top_level_keys(head)
    if keys & {"result", "error"} and "method" not in keys:
        return Withheld(f"a response over {limit} bytes")
    return error_answer(
        top_level_id(head),
        INVALID_REQUEST,
        f"Invalid Request: a line over {limit} bytes (the limit follows --max-media-bytes); "
        "give large media as a file path instead of base64",
    )


def top_level_keys(text: str) -> set[str]:
    """The keys of the top-level object in (the start of) a JSON text, as far as ``text`` goes."""
    return {token.group()[1:-1] for token in _top_level_strings(text) if _KEY_END.match(text, token.end())}


def top_level_id(text: str) -> str | int | None:
    """The value of the top-level ``"id"`` key in (the start of) a JSON object, if it is a string or
    an integer; ``None`` when it is absent, of another type, or beyond ``text``. Keys named ``id``
    inside ``params`` are never taken for it."""
    for token in _top_level_strings(text):
        if token.group() == '"id"':
            value = _ID_VALUE.match(text, token.end())
            if value is not None:  # else it was a value "id", or an id of another type
                try:
                    found = json.loads(value.group(1))
                except ValueError:  # a string with a broken escape
                    return None
                return found if isinstance(found, str | int) else None
    return None


def _top_level_strings(text: str) -> Iterator[re.Match[str]]:
    """The strings (keys and values) directly inside the top-level object of a JSON text."""
    depth = 0
    for token in _TOKEN.finditer(text):
        symbol = token.group()
        if symbol in "{[":
            depth += 1
        elif symbol in "}]":
            depth -= 1
        elif depth == 1:
            yield token


def _loads(line: str) -> Any:
    """``json.loads``, with nesting too deep for it reported as the ``ValueError`` it is to a caller."""
    try:
        return json.loads(line)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _diagnose(line: str, failure: ValidationError | None) -> dict[str, Any] | Withheld:
    """What is owed for a line that is not a valid JSON-RPC message (``failure``: why it failed
    validation, when it did)."""
    try:
        data = json.loads(line)
    except RecursionError:
        return error_answer(
            top_level_id(line[:HEAD_BYTES]),
            INVALID_REQUEST,
            "Invalid Request: the message is nested too deeply",
        )
    except ValueError as exc:
        return error_answer(None, PARSE_ERROR, f"Parse error: the line is not JSON ({exc})")
    if not isinstance(data, dict):
        return error_answer(
            None, INVALID_REQUEST, "Invalid Request: send one JSON-RPC object per line (no batches)"
        )
    answer = _invalid_object(data, failure)
    return Withheld(answer["error"]["message"]) if _unanswerable(data) else answer


def _invalid_object(data: dict[str, Any], failure: ValidationError | None) -> dict[str, Any]:
    ident = data.get("id")
    valid_id = ident if isinstance(ident, str | int) and not isinstance(ident, bool) else None
    if "id" in data and valid_id is None:
        return error_answer(None, INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer")
    if failure is not None:
        detail = failure.errors()[0]
        where = ".".join(str(part) for part in detail["loc"][1:]) or "message"
        return error_answer(valid_id, INVALID_REQUEST, f"Invalid Request: {where}: {detail['msg']}")
    return error_answer(valid_id, INVALID_REQUEST, "Invalid Request")


def _unanswerable(data: dict[str, Any]) -> bool:
    """A notification (a method, no id) or a response (a result or an error, no method)."""
    if "method" in data:
        return "id" not in data
    return "result" in data or "error" in data
