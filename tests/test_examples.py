"""The examples in examples/ run as a reader would run them, against real servers and models.

``python_client.py`` starts the server over stdio itself, with the MCP SDK's ``Client`` in its
default mode (not the handshake-era mode the other tests pin), so its streamed text also shows that
progress reaches clients of that protocol. The REST examples run against one HTTP server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import LLM
from .http_server import HttpServer, running_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
API_KEY = "example-key-5d2e8a"
RUN_DEADLINE_S = 300


def _run(command: list[str], env: dict[str, str]) -> str:
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_DEADLINE_S, env={**os.environ, **env},
        cwd=ROOT, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_the_python_client_streams_and_gets_json(models_dir: Path) -> None:
    out = _run([sys.executable, str(EXAMPLES / "python_client.py")], {"OPENARC_MODELS_DIR": str(models_dir)})
    lines = out.splitlines()
    assert lines[0].startswith("tools: ") and "generate" in lines[0], out
    streamed = out.split("\n", 1)[1].split("\n\nfinish: ")[0]
    assert streamed.strip(), f"no partial text came as progress: {out!r}"
    assert "finish: " in out and "as JSON: {" in out, out


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    log = tmp_path_factory.mktemp("examples") / "server.log"
    with running_server(models_dir, log, API_KEY, [LLM]) as running:
        yield running


def _rest_env(server: HttpServer) -> dict[str, str]:
    return {"OPENARC_URL": f"{server.url}/v1", "OPENARC_API_KEY": API_KEY}


def test_the_openai_client_example_runs_its_agent_loop(server: HttpServer) -> None:
    out = _run([sys.executable, str(EXAMPLES / "openai_client.py")], _rest_env(server))
    assert "chat, streamed: " in out and "tool call: get_weather(" in out, out
    assert "answer with the tool's result: " in out and "embeddings: 2 x 384" in out, out
    assert "transcribed back: Hello" in out, out


def test_the_curl_example_gets_no_error(server: HttpServer) -> None:
    env = {"OPENARC_URL": server.url, "OPENARC_API_KEY": API_KEY}
    out = _run(["bash", str(EXAMPLES / "http_curl.sh")], env)
    assert '"error"' not in out, out
    assert "data: [DONE]" in out and '"protocolVersion"' in out, out
