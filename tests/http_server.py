"""A real `openarc-mcp serve --transport http` process on loopback, for the HTTP tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_DEADLINE_S = 180.0


@dataclass(frozen=True)
class HttpServer:
    """Where the server listens, its key, and its log."""

    url: str
    api_key: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def exit_report(self, tail_chars: int = 3000) -> str:
        """The log's tail, then, if the server died of a native crash, the crashing thread's Python
        stack as faulthandler wrote it: last, because a CI summary shows a message's end."""
        log = self.log_text()
        crash = log.rfind("Fatal Python error")
        if crash < 0:
            return log[-tail_chars:]
        current = log.find("Current thread", crash)
        end = log.find("\n\n", current) if current >= 0 else -1
        stack = log[current : end if end >= 0 else None] if current >= 0 else log[crash:]
        stack = "\n".join(stack.splitlines()[:40])
        return f"{log[-tail_chars:]}\n---- the crash ({log[crash:].splitlines()[0]}) ----\n{stack}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(
    models_dir: Path, log: Path, api_key: str, preload: list[str], *flags: str
) -> Iterator[HttpServer]:
    """Start the server, wait until /readyz says ready, stop it with SIGTERM afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "OPENARC_MODELS_DIR": str(models_dir),
        "OPENARC_API_KEY": api_key,
        "OPENARC_PRELOAD": ",".join(preload),
        "OPENARC_LOG_LEVEL": "INFO",
    }
    command = [
        sys.executable,
        "-m",
        "openarc_mcp",
        "serve",
        "--transport",
        "http",
        "--port",
        str(port),
        *flags,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = HttpServer(f"http://127.0.0.1:{port}", api_key, log, process)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: HttpServer) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/readyz", headers=server.headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {START_DEADLINE_S:g} s:\n{server.log_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
