"""A raw JSON-RPC session with ``openarc-mcp serve`` over its pipes, the way a desktop host talks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

PROTOCOL_VERSION = "2025-11-25"
RESPONSE_DEADLINE_S = 300.0


def server_env(models_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENARC_")}
    env |= {"OPENARC_MODELS_DIR": str(models_dir), "OPENARC_LOG_LEVEL": "INFO", **extra}
    return env


def _log_file(path: Path | None) -> BinaryIO:
    """Where the server's stderr goes: ``path`` (appended to), or nowhere."""
    return path.open("ab") if path else open(os.devnull, "wb")


class RawSession:
    """Spawns the server and exchanges JSON lines with it; every line on stdout must be JSON-RPC."""

    def __init__(
        self, env: dict[str, str], args: tuple[str, ...] = ("serve",), stderr: Path | None = None
    ) -> None:
        self._env = env
        self._args = args
        self._stderr = stderr
        self._process: Process | None = None
        self._reader: BufferedByteReceiveStream | None = None
        self._next_id = 0
        self.notifications: list[dict[str, Any]] = []

    async def __aenter__(self) -> Self:
        with _log_file(self._stderr) as stderr:
            self._process = await anyio.open_process(
                [sys.executable, "-m", "openarc_mcp", *self._args], env=self._env, stderr=stderr
            )
        assert self._process.stdout is not None
        self._reader = BufferedByteReceiveStream(self._process.stdout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process = self.process
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()

    @property
    def process(self) -> Process:
        assert self._process is not None
        return self._process

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(message) + "\n").encode())

    async def receive(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await self._reader.receive_until(b"\n", 64 * 1024 * 1024)
        message = json.loads(line)
        assert message.get("jsonrpc") == "2.0", f"not JSON-RPC on stdout: {line[:200]!r}"
        return dict(message)

    async def start_request(self, method: str, params: dict[str, Any] | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return self._next_id

    async def response_to(self, request_id: int, deadline: float = RESPONSE_DEADLINE_S) -> dict[str, Any]:
        """Read until the response with that id; notifications are kept in ``notifications``.

        Fails after ``deadline`` seconds: an unanswered request is a failure, not a hang.
        """
        with anyio.fail_after(deadline):
            while True:
                message = await self.receive()
                if message.get("id") == request_id and "method" not in message:
                    return message
                if "method" in message and "id" not in message:
                    self.notifications.append(message)

    async def request(
        self, method: str, params: dict[str, Any] | None = None, deadline: float = RESPONSE_DEADLINE_S
    ) -> dict[str, Any]:
        return await self.response_to(await self.start_request(method, params), deadline)

    async def initialize(self) -> dict[str, Any]:
        response = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "raw-test-host", "version": "1.0"},
            },
        )
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return response

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def rest_of_stdout(self) -> bytes:
        """Everything left on stdout until the process closes it."""
        assert self._reader is not None
        chunks = [self._reader.buffer]
        try:
            while True:
                chunks.append(await self._reader.receive())
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b"".join(chunks)
