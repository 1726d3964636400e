"""JSON-RPC checks on the MCP streamable HTTP endpoint, answered as the stdio transport answers.

- One request per id at a time on a session. The SDK matches an answer to its request by id
  alone: a second request that reuses the id of one still being answered takes its place, and the
  first request's stream then carries keep-alive pings for ever (measured: a client waited more
  than 10 minutes). A request that reuses an id in flight is answered here at once with -32600,
  and the first is answered as usual.
- Messages that are not valid JSON-RPC get stdio's answer (``wire_lines.parse_line``): -32600 with
  the request's id and what is wrong. The SDK answered an ``id`` of null or true with 202 and no
  body, and a batch, ``"jsonrpc": "1.0"`` or array ``params`` with -32602, a long dump of its
  types, and a null id.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .wire_lines import INVALID_REQUEST, error_answer, parse_line

__all__ = ["CheckedJsonRpc"]

_SESSION_HEADER = "mcp-session-id"


class CheckedJsonRpc:
    """ASGI middleware for the streamable HTTP endpoint: answers a message that is not valid
    JSON-RPC as stdio does, and refuses a request whose id is in flight on its session (requests
    without a session are left to the SDK there: the handshake, stateless use)."""

    def __init__(self, app: ASGIApp, path: str = "/mcp") -> None:
        self.app = app
        self.path = path
        self._in_flight: set[tuple[str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        session = Headers(scope=scope).get(_SESSION_HEADER)
        messages, body = await _read_body(receive)
        message = _json(body)
        owed = _owed_error(message, body)
        if owed is not None:
            await _send_json(send, owed, status=400)
            return
        request_id = _request_id(message)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        if request_id is None or session is None:
            await self.app(scope, replay, send)
            return
        key = (session, json.dumps(request_id))
        if key in self._in_flight:
            await _send_json(send, _refusal(request_id))
            return
        self._in_flight.add(key)
        try:
            await self.app(scope, replay, _until_answered(send, lambda: self._in_flight.discard(key)))
        finally:
            self._in_flight.discard(key)


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """Every message of the request's body (the guard in front has bounded its size and pace)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)


_NOT_JSON = object()


def _json(body: bytes) -> Any:
    """The body parsed once, or ``_NOT_JSON`` (the SDK answers those)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _owed_error(message: Any, body: bytes) -> dict[str, Any] | None:
    """stdio's error answer for a body that is JSON but not a valid JSON-RPC message, else ``None``
    (valid messages, and bodies that are not JSON, are the SDK's to answer). Plain messages pass
    a quick look; only the others are validated."""
    if message is _NOT_JSON or (isinstance(message, dict) and _plainly_valid(message)):
        return None
    owed = parse_line(body.decode("utf-8", errors="replace"))
    return owed if isinstance(owed, dict) else None


def _plainly_valid(message: dict[str, Any]) -> bool:
    ident = message.get("id", 0)
    return (
        message.get("jsonrpc") == "2.0"
        and isinstance(ident, str | int)
        and not isinstance(ident, bool)
        and isinstance(message.get("params", {}), dict)
    )


def _request_id(message: Any) -> str | int | None:
    """The id of a JSON-RPC request (not a notification, response or batch); ``None`` otherwise."""
    if not isinstance(message, dict) or "method" not in message:
        return None
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return None
    return request_id


def _until_answered(send: Send, answered: Any) -> Send:
    """``send``, calling ``answered`` once the response's last byte is out (a streamed answer's
    stream may stay open a little after it)."""

    async def forward(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered()

    return forward


def _refusal(request_id: str | int) -> dict[str, Any]:
    message = (
        f"request id {json.dumps(request_id)} is in use by a request still being answered on this "
        "session; give each request its own id"
    )
    return error_answer(request_id, INVALID_REQUEST, message)


async def _send_json(send: Send, payload: dict[str, Any], status: int = 200) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
