"""Serving MCP over stdio: the transport desktop hosts launch.

The SDK's stdio transport drops lines it cannot parse without a word, so a host that sent a
malformed request would wait for an answer forever. Here every line passes a check first: a
line that is not JSON gets ``-32700 Parse error``; JSON that is not a valid JSON-RPC message gets
``-32600 Invalid Request`` (with the request's id when it has one); lines longer than the limit
are discarded unread and answered the same way. Notifications that are invalid cannot be
answered (they have no id) and are logged. Valid lines go on to the SDK unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import IO, Any, cast

import anyio
import mcp_types
from mcp.server.stdio import stdio_server
from pydantic import ValidationError

from ..app import OpenArcApp
from ..settings import Settings
from .mcp_server import build_mcp_server

__all__ = ["check_line", "serve_stdio"]

logger = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
_LINE_OVERHEAD = 1024 * 1024  # JSON around the largest base64 payload a line may carry
_READ_CHUNK = 1024 * 1024


async def serve_stdio(settings: Settings) -> None:
    """Serve on stdin/stdout until the host closes stdin.

    Models configured to preload load in the background: the handshake never waits for them.
    """
    limit = settings.max_media_bytes * 4 // 3 + _LINE_OVERHEAD
    async with OpenArcApp(settings) as app:
        server = build_mcp_server(app)
        wire = _Wire(sys.stdout)
        lines = _checked_lines(_claim_stdin(), wire, limit)
        logger.info("openarc-mcp serving over stdio; models in %s", settings.models_dir)
        async with anyio.create_task_group() as group:  # its scope also ends the SDK's reader tasks
            group.start_soon(_stop_on_signals, group.cancel_scope)
            async with stdio_server(stdin=cast(Any, lines), stdout=cast(Any, wire)) as (read, write):
                lowlevel = server._lowlevel_server  # the SDK runs custom streams only at this level
                await lowlevel.run(read, write, lowlevel.create_initialization_options())
            group.cancel_scope.cancel()


async def _stop_on_signals(serving: anyio.CancelScope) -> None:
    """SIGTERM or SIGINT (a host quitting, Ctrl-C) ends serving like a closed stdin: models freed, exit 0."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            logger.info("%s received: stopping", signal.Signals(number).name)
            serving.cancel()
            return


def check_line(line: str) -> dict[str, Any] | None:
    """``None`` for a valid JSON-RPC message; else the error response owed (its id may be null)."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        return _error(None, PARSE_ERROR, f"Parse error: the line is not JSON ({exc})")
    if not isinstance(data, dict):
        return _error(
            None, INVALID_REQUEST, "Invalid Request: send one JSON-RPC object per line (no batches)"
        )
    ident = data.get("id")
    valid_id = ident if isinstance(ident, str | int) and not isinstance(ident, bool) else None
    if "id" in data and valid_id is None:
        return _error(None, INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer")
    try:
        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        detail = exc.errors()[0]
        where = ".".join(str(part) for part in detail["loc"][1:]) or "message"
        return _error(valid_id, INVALID_REQUEST, f"Invalid Request: {where}: {detail['msg']}")
    return None


def _error(ident: str | int | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


class _Wire:
    """The protocol's stdout, shared by the SDK's writer and this module's error answers."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = anyio.Lock()

    async def write(self, text: str) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._stream.write, text)

    async def flush(self) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._stream.flush)

    async def answer(self, message: dict[str, Any]) -> None:
        await self.write(json.dumps(message) + "\n")
        await self.flush()


def _claim_stdin() -> IO[bytes]:
    """The wire's stdin on a private descriptor; fd 0 reads EOF for everyone else (child processes)."""
    private = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return os.fdopen(private, "rb", closefd=False)


async def _checked_lines(source: IO[bytes], wire: _Wire, limit: int) -> AsyncIterator[str]:
    """Valid lines from ``source``; the others are answered on ``wire`` and never reach the SDK."""
    while True:
        raw = await anyio.to_thread.run_sync(source.readline, limit + 1, abandon_on_cancel=True)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            await anyio.to_thread.run_sync(_skip_rest_of_line, source, abandon_on_cancel=True)
            await wire.answer(_error(None, INVALID_REQUEST, f"Invalid Request: a line over {limit} bytes"))
            continue
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        answer = check_line(line)
        if answer is None:
            yield line
        elif answer["id"] is None and _is_notification(line):
            logger.warning("dropped an invalid notification: %s", answer["error"]["message"])
        else:
            await wire.answer(answer)


def _is_notification(line: str) -> bool:
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and "id" not in data and "method" in data


def _skip_rest_of_line(source: IO[bytes]) -> None:
    while chunk := source.readline(_READ_CHUNK):
        if chunk.endswith(b"\n"):
            return
