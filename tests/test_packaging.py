"""server.json, README and --help stay true to the code."""

from __future__ import annotations

import json
import re
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
