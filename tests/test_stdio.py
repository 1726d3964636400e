"""A real subprocess over stdio, driven by raw JSON-RPC lines as a desktop host does."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import EMBEDDER, LLM
from .stdio_session import PROTOCOL_VERSION, RawSession, server_env

pytestmark = pytest.mark.anyio


def _call(name: str, arguments: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return params


def _resource_json(response: dict[str, Any]) -> Any:
    return json.loads(response["result"]["contents"][0]["text"])


async def test_desktop_host_session(models_dir: Path) -> None:
    with anyio.fail_after(120):
        async with RawSession(server_env(models_dir)) as session:
            init = await session.initialize()
            assert init["result"]["protocolVersion"] == PROTOCOL_VERSION
            assert init["result"]["serverInfo"]["name"] == "openarc-mcp"
            assert "tools" in init["result"]["capabilities"]

            tools = (await session.request("tools/list"))["result"]["tools"]
            assert {"load_model", "unload_model", "generate"} <= {tool["name"] for tool in tools}
            assert all(tool["description"] and tool["inputSchema"] for tool in tools)

            resources = (await session.request("resources/list"))["result"]["resources"]
            assert {"openarc://models", "openarc://devices"} <= {r["uri"] for r in resources}
            templates = (await session.request("resources/templates/list"))["result"]["resourceTemplates"]
            assert "openarc://models/{name}" in {t["uriTemplate"] for t in templates}

            devices = _resource_json(await session.request("resources/read", {"uri": "openarc://devices"}))
            assert "CPU" in {device["name"] for device in devices}

            call = _call("generate", {"model": LLM, "prompt": "What is the capital of France?"}, token="p1")
            answer = await session.request("tools/call", call)
            assert answer["result"]["isError"] is False
            assert "Paris" in answer["result"]["structuredContent"]["text"]
            progress = [n for n in session.notifications if n["method"] == "notifications/progress"]
            assert progress and all(n["params"]["progressToken"] == "p1" for n in progress)

            unknown = await session.request("tools/call", _call("generate", {"model": "nope", "prompt": "x"}))
            assert unknown["result"]["isError"] is True
            assert "no model named 'nope'" in unknown["result"]["content"][0]["text"]

            await session.close_stdin()
            leftover = await session.rest_of_stdout()
            assert leftover.strip() == b""
            assert await session.process.wait() == 0


async def _wait_until_decoding(session: RawSession, request_id: int) -> None:
    """Read until a progress notification carries generated text (not a loading message)."""
    while True:
        message = await session.receive()
        assert message.get("id") != request_id, "the generation finished before the test could act"
        text = (
            message.get("params", {}).get("message", "")
            if message.get("method") == "notifications/progress"
            else ""
        )
        if text.strip() and not text.startswith("loading"):
            return


def _long_generation(token: str) -> dict[str, Any]:
    return _call("generate", {"model": LLM, "prompt": "Write a very long story.", "max_tokens": 4000}, token)


async def test_cancel_notification_stops_the_generation(models_dir: Path) -> None:
    with anyio.fail_after(120):
        async with RawSession(server_env(models_dir)) as session:
            await session.initialize()
            cancelled_id = await session.start_request("tools/call", _long_generation("c1"))
            await _wait_until_decoding(session, cancelled_id)
            await session.send(
                {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": cancelled_id}}
            )
            short = await session.request(
                "tools/call", _call("generate", {"model": LLM, "prompt": "Hi", "max_tokens": 4})
            )
            assert short["result"]["isError"] is False
            details = _resource_json(
                await session.request("resources/read", {"uri": f"openarc://models/{LLM}"})
            )
            assert details["cancelled_requests"] == 1


async def test_handshake_does_not_wait_for_configured_models(models_dir: Path, tmp_path: Path) -> None:
    names = ["pre-a", "pre-b", "pre-c"]
    config = tmp_path / "openarc.toml"
    config.write_text(
        "".join(f'[[models]]\nname = "{n}"\npath = "{models_dir / LLM}"\ntype = "llm"\n\n' for n in names)
    )
    with anyio.fail_after(120):
        async with RawSession(server_env(models_dir, OPENARC_CONFIG=str(config))) as session:
            await session.initialize()
            listing = _resource_json(await session.request("resources/read", {"uri": "openarc://models"}))
            statuses = {m["name"]: m["status"] for m in listing}
            assert "loading" in {statuses[n] for n in names}, statuses
            answer = await session.request(
                "tools/call", _call("generate", {"model": "pre-c", "prompt": "Hi", "max_tokens": 4})
            )
            assert answer["result"]["isError"] is False


async def test_closing_stdin_while_a_model_loads_ends_the_process(models_dir: Path) -> None:
    with anyio.fail_after(60):
        async with RawSession(server_env(models_dir, OPENARC_PRELOAD=LLM)) as session:
            await session.initialize()
            await session.close_stdin()
            assert await session.process.wait() == 0


async def test_closing_stdin_during_a_generation_ends_the_process(models_dir: Path) -> None:
    with anyio.fail_after(120):
        async with RawSession(server_env(models_dir)) as session:
            await session.initialize()
            await _wait_until_decoding(
                session, await session.start_request("tools/call", _long_generation("g1"))
            )
            await session.close_stdin()
            with anyio.fail_after(15):  # 4000 tokens would take ~40 s: the process must not wait for them
                assert await session.process.wait() == 0


@pytest.mark.parametrize("direct", ["true", "false"], ids=["direct-path", "sdk-path"])
async def test_sigterm_during_a_generation_answers_it_and_exits_0(models_dir: Path, direct: str) -> None:
    """A host that stops the server with requests still running gets an answer for each, as when it
    closes stdin, not silence; the 4000-token generation is not waited for."""
    with anyio.fail_after(120):
        async with RawSession(server_env(models_dir, OPENARC_DIRECT_TOOL_CALLS=direct)) as session:
            await session.initialize()
            running = await session.start_request("tools/call", _long_generation("t1"))
            await _wait_until_decoding(session, running)
            session.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                while (answer := await session.receive()).get("id") != running:
                    pass
                assert answer["error"]["code"] == -32000 and answer["error"]["message"] == "Connection closed"
                assert await session.process.wait() == 0


async def test_sigterm_with_models_loaded_frees_them_and_exits_0(models_dir: Path) -> None:
    with anyio.fail_after(120):
        async with RawSession(server_env(models_dir, OPENARC_PRELOAD=f"{LLM},{EMBEDDER}")) as session:
            await session.initialize()
            for name in (LLM, EMBEDDER):  # waits for each preload through the loading path
                await session.request("tools/call", _call("load_model", {"model_name": name}))
            session.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):  # measured ~0.3 s (docs/reliability.md); the deadline only bounds it
                assert await session.process.wait() == 0


async def test_a_request_the_sdk_serves_gets_an_answer_when_stdin_ends_mid_call(tmp_path: Path) -> None:
    """Found by a review: the SDK leaves a request unanswered when its answer's write is cancelled at
    shutdown (the first read of openarc://devices imports OpenVINO in a thread that cannot be
    cancelled). The transport answers each request it handed the SDK, even then."""
    with anyio.fail_after(60):
        async with RawSession(server_env(tmp_path)) as session:
            await session.initialize()
            devices = await session.start_request("resources/read", {"uri": "openarc://devices"})
            await anyio.sleep(0.05)
            await session.close_stdin()
            lines = (await session.rest_of_stdout()).splitlines()
            assert await session.process.wait() == 0
    answers = [json.loads(line) for line in lines if line.strip()]
    assert [answer for answer in answers if answer.get("id") == devices], answers


@pytest.mark.parametrize("unread", [1.0, 0.0], ids=["answers-unread", "reset-before-answers"])
def test_a_host_that_resets_the_socket_ends_the_server_cleanly(tmp_path: Path, unread: float) -> None:
    """Hosts built on libuv hand the server a socketpair; one that closes it with answers unread
    makes the next read fail with ECONNRESET, which is an end of input like any other. Reset before
    the answers are out, the write fails with bytes still buffered in stdout, which the interpreter's
    exit must not try to flush again (it would exit 120)."""
    host, server_end = socket.socketpair()
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        wire = server_end.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "openarc_mcp", "serve"], stdin=wire, stdout=wire, stderr=stderr,
            env=server_env(tmp_path),
        )  # fmt: skip
    server_end.close()
    try:
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        lines = [{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}]
        lines += [{"jsonrpc": "2.0", "id": n, "method": "ping"} for n in range(1, 50)]
        host.sendall(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        time.sleep(unread)  # answers arrive, unread (or not yet: the server is still starting)
        host.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        host.close()  # a reset
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


async def test_a_host_that_stops_reading_does_not_keep_the_server_from_exiting(tmp_path: Path) -> None:
    """1,500 answers a host never reads fill the pipe and the server's queue; once stdin ends the
    server still exits within its drain deadlines (10 s each), not never."""
    async with RawSession(server_env(tmp_path)) as session:
        await session.initialize()
        call = {"name": "embed", "arguments": {"model": "none-here", "texts": "x"}}
        burst = [
            {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": call} for n in range(100, 1600)
        ]
        assert session.process.stdin is not None
        await session.process.stdin.send(b"".join(json.dumps(line).encode() + b"\n" for line in burst))
        await anyio.sleep(2)  # the answers pile up, unread
        await session.close_stdin()
        with anyio.fail_after(60):
            assert await session.process.wait() == 0
