"""Server-sent events for streamed completions, and cancelling work when the client goes away.

``EventStream`` sends nothing until its producer emits the first event: an error raised before
that (unknown model, busy, failed load) is still answered with its own HTTP status. After it,
errors travel as a final ``data: {"error": ...}`` event. A client that disconnects cancels the
producer, which cancels the request on its model worker (generation stops at the next token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import APIError, error_body, error_response

__all__ = ["Emit", "EventStream", "until_disconnected"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Emit = Callable[[dict[str, Any] | str], Awaitable[None]]
"""Sends one event: a JSON object, or a literal such as ``[DONE]``."""

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not hold the stream back
]


class _ClientGone(Exception):
    """The server could not send: the client is gone (nobody is left to answer)."""


async def _send_or_gone(send: Send, message: dict[str, Any]) -> None:
    """``send``, with a failure to send told apart from the producer's own ``OSError``s."""
    try:
        await send(message)
    except OSError as exc:
        raise _ClientGone from exc


class EventStream(Response):
    """An ASGI response whose events come from ``produce(emit)``."""

    def __init__(self, produce: Callable[[Emit], Awaitable[None]]) -> None:  # sends itself: no body
        self._produce = produce
        self._started = False
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        failure: list[Exception] = []
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            try:
                await self._run(scope, receive, send)
            except _ClientGone:
                pass
            except Exception as exc:  # re-raised below, outside the task group (not as a group)
                failure.append(exc)
            group.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def emit(event: dict[str, Any] | str) -> None:
            if not self._started:
                self._started = True
                await _send_or_gone(send, {"type": "http.response.start", "status": 200, "headers": _HEADERS})
            payload = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
            await _send_or_gone(
                send,
                {"type": "http.response.body", "body": f"data: {payload}\n\n".encode(), "more_body": True},
            )

        try:
            await self._produce_checked(emit)
        except APIError as error:
            if not self._started:
                await error_response(error)(scope, receive, partial(_send_or_gone, send))
                return
            await emit(error_body(error.status, error.message, error.param, error.code))
        if not self._started:
            await _send_or_gone(send, {"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await _send_or_gone(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _produce_checked(self, emit: Emit) -> None:
        """Produce; a fault of the server becomes a generic 500 (its details go to the log), an
        ``OSError`` of the producer's own included: only a failure to send means the client left."""
        try:
            await self._produce(emit)
        except (APIError, _ClientGone):
            raise
        except Exception as exc:
            logger.exception("a streamed response failed")
            raise APIError(500, "the server failed on this request; details are in its log") from exc


async def until_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; if the client disconnects first, cancel it (nobody is left to answer)."""
    outcome: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on_disconnect, request.receive, group.cancel_scope)
        try:
            outcome.append(await work())
        except Exception as exc:  # re-raised below, outside the task group (not as a group)
            failure.append(exc)
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
        raise APIError(499, "the client closed the connection")  # never reaches the client
    return outcome[0]


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Wait for the client to go away (the request body is already read), then cancel ``scope``."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
