"""One request per JSON-RPC id at a time on an MCP streamable HTTP session.

The SDK matches an answer to its request by id alone: a second request that reuses the id of one
still being answered takes its place, and the first request's stream then carries keep-alive
pings for ever (measured: a client waited more than 10 minutes). JSON-RPC asks for ids unique
among a client's requests; a request that reuses one still in flight is answered here at once
with -32600, and the first is answered as usual.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["OneRequestPerId"]

_SESSION_HEADER = "mcp-session-id"
_INVALID_REQUEST = -32600


class OneRequestPerId:
    """ASGI middleware for the streamable HTTP endpoint: refuses a request whose id is in flight on
    its session (requests without a session are the SDK's to answer: the handshake, stateless use)."""

    def __init__(self, app: ASGIApp, path: str = "/mcp") -> None:
        self.app = app
        self.path = path
        self._in_flight: set[tuple[str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = Headers(scope=scope).get(_SESSION_HEADER) if scope["type"] == "http" else None
        if session is None or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        request_id = _request_id(body)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        if request_id is None:
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


def _request_id(body: bytes) -> str | int | None:
    """The id of a JSON-RPC request (not a notification, response or batch); ``None`` otherwise or
    when the body is not JSON (the SDK answers those)."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
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
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": _INVALID_REQUEST, "message": message}}


async def _send_json(send: Send, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
