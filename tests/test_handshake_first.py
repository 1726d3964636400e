"""Models configured to preload start loading once the stdio handshake is answered, not before.

The transport calls its ``on_handshake`` callback (``OpenArcApp.start_preloads`` when serving) once:
after the answer to ``initialize`` has been written, when a host that skips the handshake sends its
first request, or ``HANDSHAKE_WAIT`` seconds after the start. Run in process over real pipes with a
minimal SDK server; the serving command's wiring is checked with a real preload at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
from mcp.server.mcpserver import MCPServer

from openarc_mcp.transports import stdio

from .conftest import EMBEDDER
from .stdio_session import server_env

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\n").encode()


class Host:
    """The host's ends of the server's stdin and stdout pipes."""

    def __init__(self) -> None:
        self.stdin_read, self.stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        self.stdout_read = stdout_read
        self.server_stdout: IO[bytes] = os.fdopen(stdout_write, "wb")

    def send(self, message: dict[str, Any]) -> None:
        os.write(self.stdin_write, _line(message))

    def unread(self) -> int:
        """Bytes the server has written that the host has not read."""
        return stdio._unread(self.stdout_read)

    def close(self) -> None:
        for fd in (self.stdin_write, self.stdin_read, self.stdout_read):
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)
        self.server_stdout.close()


@pytest.fixture
def host() -> Iterator[Host]:
    pipes = Host()
    yield pipes
    pipes.close()


class Calls:
    """The handshake callback's calls: when each came, and the answer bytes written by then."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.seen: list[tuple[float, int]] = []
        self.first = anyio.Event()

    def __call__(self) -> None:
        self.seen.append((time.monotonic(), self.host.unread()))
        self.first.set()

    async def wait(self) -> None:
        with anyio.fail_after(10):
            await self.first.wait()


async def _serve_until(host: Host, ended: threading.Event, calls: Calls) -> None:
    """Serve a minimal SDK server on the host's pipes until ``ended``, with ``calls`` as the
    handshake callback."""

    async def stop_when_ended() -> None:
        await anyio.to_thread.run_sync(ended.wait, 20)
        os.close(host.stdin_write)  # stdin's end stops serving
        host.stdin_write = -1

    server = MCPServer("handshake-test")
    async with anyio.create_task_group() as group:
        group.start_soon(stop_when_ended)
        with anyio.fail_after(30):
            await stdio._serve_wire(
                server, host.stdin_read, host.server_stdout, 1 << 20, True, stdio._Once(calls)
            )


@asynccontextmanager
async def serving(host: Host) -> AsyncIterator[Calls]:
    """The wire served on the host's pipes while inside; yields the handshake callback's calls."""
    calls = Calls(host)
    ended = threading.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(_serve_until, host, ended, calls)
        try:
            yield calls
        finally:
            ended.set()


async def test_the_callback_comes_once_the_answer_to_initialize_is_written(host: Host) -> None:
    async with serving(host) as calls:
        await anyio.sleep(0.3)
        assert calls.seen == [], "called before the host said anything"
        host.send(INITIALIZE)
        await calls.wait()
        host.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        host.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        await anyio.sleep(0.2)
    assert len(calls.seen) == 1, calls.seen
    assert calls.seen[0][1] > 0, "called before the answer to initialize was written"
    answer = json.loads(os.read(host.stdout_read, 1 << 16).split(b"\n")[0])
    assert answer["id"] == 1 and "protocolVersion" in answer["result"]


async def test_a_host_that_skips_the_handshake_completes_it_with_its_first_request(host: Host) -> None:
    async with serving(host) as calls:
        await anyio.sleep(0.3)
        sent = time.monotonic()
        host.send({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
        await calls.wait()
    assert len(calls.seen) == 1 and calls.seen[0][0] - sent < stdio.HANDSHAKE_WAIT


async def test_a_silent_host_gets_the_callback_after_the_wait(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stdio, "HANDSHAKE_WAIT", 0.5)
    started = time.monotonic()
    async with serving(host) as calls:
        await calls.wait()
    assert len(calls.seen) == 1 and calls.seen[0][0] - started >= 0.5


def test_the_serving_command_loads_its_preloads_after_the_handshake(models_dir: Path) -> None:
    """`openarc-mcp serve` with a model to preload: nothing loads while the host has not spoken
    (it used to start with the server, beside the handshake); after it the tools are listed (they
    are registered once the handshake is answered) and the model loads."""
    env = server_env(models_dir) | {"OPENARC_PRELOAD": EMBEDDER, "OPENARC_LOG_LEVEL": "INFO"}
    command = [sys.executable, "-m", "openarc_mcp", "serve"]
    pipe = subprocess.PIPE
    with subprocess.Popen(command, env=env, stdin=pipe, stdout=pipe, stderr=pipe) as process:
        stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
        assert stdin is not None and stdout is not None and stderr is not None
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(line.decode() for line in stderr), daemon=True)
        reader.start()
        try:
            _wait_for(lambda: any("serving over stdio" in line for line in log), 60)
            time.sleep(0.5)  # well inside HANDSHAKE_WAIT
            assert not any("loading model" in line for line in log), log
            stdin.write(_line(INITIALIZE))
            stdin.flush()
            assert json.loads(stdout.readline())["id"] == 1
            stdin.write(_line({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            stdin.flush()
            listed = {tool["name"] for tool in json.loads(stdout.readline())["result"]["tools"]}
            assert {"generate", "embed", "rerank", "transcribe", "speak", "load_model"} <= listed
            _wait_for(lambda: any(f"model '{EMBEDDER}' loaded" in line for line in log), 120)
        finally:
            stdin.close()
            process.wait(60)
            reader.join(10)


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


_STARTUP_IMPORTS = """
import json, sys, anyio
from pathlib import Path
from pydantic import BaseModel
import openarc_mcp.cli
from openarc_mcp import schema
from openarc_mcp.app import OpenArcApp
from openarc_mcp.settings import Settings
from openarc_mcp.transports import stdio
from openarc_mcp.transports.mcp_server import add_tools, build_mcp_server

def built_schemas():
    classes = [value for value in vars(schema).values() if isinstance(value, type)]
    return sorted(c.__name__ for c in classes if issubclass(c, BaseModel) and c.__pydantic_complete__)

async def main():
    settings = Settings(models_dir=Path(sys.argv[1]), preload=[sys.argv[2]])
    async with OpenArcApp(settings, defer_preloads=True) as app:
        server = build_mcp_server(app, with_tools=False)
        built = built_schemas()  # what serving over stdio has done when it answers the handshake
        add_tools(server, app)
    return built

built = anyio.run(main)
heavy = sorted(m for m in ("numpy", "openvino", "openvino_genai", "PIL", "soundfile") if m in sys.modules)
model_code = ("openarc_mcp.engines.", "openarc_mcp.library.prepare", "ctypes", "tomllib")
for_models = sorted(m for m in sys.modules if m.startswith(model_code) and m != "openarc_mcp.engines.base")
report = {"heavy modules": heavy, "imported for models only": for_models}
print(json.dumps(report | {"schemas built before the tools": built}))
"""


def test_what_serves_the_handshake_imports_nothing_heavy(models_dir: Path) -> None:
    """Until a model loads, the stdio server needs neither OpenVINO nor numpy (~45 ms of start-up),
    nor the engines' modules, model preparation, ctypes or a config file's TOML parser (~20 ms);
    until the tools are registered (after the handshake), no schema model is built (~15 ms) but the
    one that checks the configured preloads before anything starts."""
    completed = subprocess.run(
        [sys.executable, "-c", _STARTUP_IMPORTS, str(models_dir), EMBEDDER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    expected = {
        "heavy modules": [],
        "imported for models only": [],
        "schemas built before the tools": ["LoadRequest"],
    }
    assert json.loads(completed.stdout) == expected
