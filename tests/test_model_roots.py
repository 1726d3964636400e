"""load_model's model_path is confined to the models directory and --model-roots (symlinks and '..'
resolved); the operator's config file may name any folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.errors import ModelPathError
from openarc_mcp.schema import LoadRequest, ModelRecord, ModelStatus, ModelType
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import EMBEDDER, make_settings, text_of

pytestmark = pytest.mark.anyio

SETTLED = {ModelStatus.LOADED, ModelStatus.FAILED}
REFUSED = "outside the folders this server loads models from"


def _request(path: Path | str, name: str = "e") -> LoadRequest:
    return LoadRequest(model_name=name, model_path=Path(path), model_type=ModelType.EMBEDDING)


@pytest.fixture
async def confined_app(models_dir: Path) -> AsyncIterator[OpenArcApp]:
    async with OpenArcApp(make_settings(models_dir, model_roots=[])) as app:
        yield app


async def test_a_path_in_the_models_directory_loads_absolute_or_relative(
    confined_app: OpenArcApp, models_dir: Path
) -> None:
    relative = await confined_app.load_model(_request(EMBEDDER, "relative"))
    absolute = await confined_app.load_model(_request(models_dir / EMBEDDER, "absolute"))
    assert relative.status is absolute.status is ModelStatus.LOADED
    vectors = await confined_app.embed("relative", ["x"], "document", None)
    assert len(vectors.embeddings[0]) == 384


@pytest.mark.parametrize("path", ["/usr", "/no/such/model", "../../../../../../../etc", "~/.ssh"])
async def test_paths_outside_are_refused_without_probing_them(confined_app: OpenArcApp, path: str) -> None:
    with pytest.raises(ModelPathError, match=REFUSED):
        await confined_app.load_model(_request(path))
    assert confined_app.registry.entries() == []  # refused before anything was registered


async def test_a_symlink_out_of_the_models_directory_is_refused(models_dir: Path, tmp_path: Path) -> None:
    own_models = tmp_path / "models"
    own_models.mkdir()
    (own_models / "link").symlink_to(models_dir / EMBEDDER, target_is_directory=True)
    async with OpenArcApp(make_settings(own_models, model_roots=[])) as app:
        with pytest.raises(ModelPathError, match=REFUSED):
            await app.load_model(_request("link"))


async def test_model_roots_widen_where_models_may_come_from(models_dir: Path, tmp_path: Path) -> None:
    async with OpenArcApp(make_settings(tmp_path, model_roots=[str(models_dir)])) as app:
        record = await app.load_model(_request(models_dir / EMBEDDER))
        assert record.status is ModelStatus.LOADED


async def test_the_config_file_may_name_any_folder(models_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "openarc.toml"
    entry = f'name = "configured"\npath = "{models_dir / EMBEDDER}"\ntype = "embedding"\n'
    config.write_text(f"[[models]]\n{entry}")
    own_models = tmp_path / "models"
    own_models.mkdir()
    async with OpenArcApp(make_settings(own_models, model_roots=[], config=config)) as app:
        record = await _start_up_load(app, "configured")
        assert record.status is ModelStatus.LOADED, record


async def _start_up_load(app: OpenArcApp, name: str) -> ModelRecord:
    """The record of a start-up load once it has settled, read from the status view a host sees."""
    for _ in range(2400):  # 120 s
        record = app.startup_status()[name]
        if record is not None and record.status in SETTLED:
            return record
        await anyio.sleep(0.05)
    raise AssertionError(f"the start-up load of {name} did not settle")


async def test_the_tool_says_why_and_how(confined_app: OpenArcApp) -> None:
    async with Client(build_mcp_server(confined_app)) as client:
        arguments = {"model_name": "x", "model_path": "/etc", "model_type": "llm"}
        result = await client.call_tool("load_model", arguments)
    assert result.is_error
    assert REFUSED in text_of(result) and "--model-roots" in text_of(result)


async def test_over_http_a_home_path_tells_nothing_of_the_servers_home(models_dir: Path) -> None:
    """'~' is a local host's shorthand; a remote caller's '~' is a folder name like any other, so
    an error never shows where the server's user lives (or whether another user exists)."""
    async with OpenArcApp(make_settings(models_dir, transport="http", model_roots=[])) as app:
        for path in ("~", "~root/models"):
            with pytest.raises(ModelPathError) as raised:
                await app.load_model(_request(path))
            assert str(Path.home()) not in str(raised.value).replace(str(models_dir), ""), raised.value
