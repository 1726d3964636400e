"""server.json, README and --help stay true to the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from openarc_mcp.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def _server_json() -> dict[str, object]:
    return dict(json.loads((ROOT / "server.json").read_text()))


def _variables() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def test_server_json_follows_the_registry_schema_essentials() -> None:
    manifest = _server_json()
    assert (
        manifest["$schema"] == "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
    )
    assert re.fullmatch(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+", str(manifest["name"]))
    assert 1 <= len(str(manifest["description"])) <= 100
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert manifest["version"] == version
    packages = manifest["packages"]
    assert isinstance(packages, list) and len(packages) == 1
    package = packages[0]
    assert package["registryType"] == "pypi"
    assert package["identifier"] == "openarc-mcp"
    assert package["version"] == version
    assert package["transport"] == {"type": "stdio"}


def test_server_json_lists_every_setting_variable() -> None:
    packages = _server_json()["packages"]
    assert isinstance(packages, list)
    listed = {variable["name"] for variable in packages[0]["environmentVariables"]}
    assert listed == _variables()


def test_readme_names_the_registry_entry_and_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"<!-- mcp-name: {_server_json()['name']} -->" in readme
    missing = [variable for variable in _variables() if f"`{variable}`" not in readme]
    assert not missing, f"README does not document {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_serving_never_imports_torch_or_optimum(models_dir: Path) -> None:
    script = f"""
import sys, anyio
from pathlib import Path
from openarc_mcp.app import OpenArcApp
from openarc_mcp.schema import GenerationOptions, LoadRequest
from openarc_mcp.settings import Settings
from openarc_mcp.transports.mcp_server import build_mcp_server

async def main():
    async with OpenArcApp(Settings(models_dir=Path({str(models_dir)!r}))) as app:
        build_mcp_server(app)
        for name in ("smollm2-135m-instruct", "all-minilm-l6-v2", "minilm-l6-cosine-reranker", "kokoro-82m"):
            await app.load_model(LoadRequest(model_name=name))
        await app.generate(None, "Hi", None, GenerationOptions(max_tokens=2))
        await app.embed(None, "Hi", "document", None)
        await app.rerank(None, "Hi", ["Hello"], None)
        await app.speak(None, "Hi.", None, 1.0, "en-us", "wav", None)
anyio.run(main)
print(sorted(m for m in ("torch", "optimum", "transformers") if m in sys.modules))
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
