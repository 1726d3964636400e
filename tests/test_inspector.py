"""An independent client, the MCP Inspector CLI (npm), against the stdio server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import LLM

INSPECTOR = os.environ.get("OPENARC_INSPECTOR", "")
SERVER = str(Path(sys.executable).with_name("openarc-mcp"))


@pytest.fixture
def inspector() -> str:
    if not INSPECTOR or not Path(INSPECTOR).is_file():
        if os.environ.get("CI"):
            pytest.fail("the MCP Inspector CLI is not installed; scripts/test.sh installs it with npm")
        pytest.skip("set OPENARC_INSPECTOR (scripts/test.sh installs the MCP Inspector CLI)")
    return INSPECTOR


def _inspect(inspector: str, models_dir: Path, *method: str) -> Any:
    command = [
        inspector,
        "--cli",
        SERVER,
        "serve",
        "-e",
        f"OPENARC_MODELS_DIR={models_dir}",
        "--method",
        *method,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_inspector_lists_the_tools(inspector: str, models_dir: Path) -> None:
    tools = {tool["name"]: tool for tool in _inspect(inspector, models_dir, "tools/list")["tools"]}
    assert {"load_model", "unload_model", "generate"} <= set(tools)
    assert "outputSchema" in tools["generate"]


def test_inspector_lists_the_resources(inspector: str, models_dir: Path) -> None:
    resources = _inspect(inspector, models_dir, "resources/list")["resources"]
    assert {"openarc://models", "openarc://devices"} <= {r["uri"] for r in resources}


def test_inspector_calls_generate(inspector: str, models_dir: Path) -> None:
    arguments = json.dumps({"model": LLM, "prompt": "What is the capital of France?"})
    result = _inspect(
        inspector, models_dir, "tools/call", "--tool-name", "generate", "--tool-args-json", arguments
    )
    assert result["isError"] is False
    assert "Paris" in result["structuredContent"]["text"]
