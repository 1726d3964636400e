"""What the media tools tell callers about sending media matches what this server accepts: file
paths where it reads them (anywhere over stdio, only under --media-roots over HTTP), and over HTTP
the request body limit that base64 must fit in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import make_settings

pytestmark = pytest.mark.anyio


async def _media_descriptions(models_dir: Path, **settings: Any) -> tuple[str, str]:
    app = OpenArcApp(make_settings(models_dir, **settings))
    async with app, Client(build_mcp_server(app)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    audio = tools["transcribe"].input_schema["properties"]["audio"]["description"]
    image = tools["describe_image"].input_schema["properties"]["image"]["description"]
    return audio, image


async def test_over_stdio_any_file_path_is_offered(models_dir: Path) -> None:
    for text in await _media_descriptions(models_dir, transport="stdio"):
        assert "a file path on the server's machine (preferred)" in text
        assert "request must fit" not in text


async def test_over_http_file_paths_are_not_offered_and_the_body_limit_is_named(models_dir: Path) -> None:
    for text in await _media_descriptions(models_dir, transport="http", max_body_bytes=4_000_000):
        assert "file paths are refused" in text
        assert "(preferred)" not in text
        assert "fit in 4000000 bytes (about 3000000 of media)" in text


async def test_over_http_with_media_roots_paths_under_them_are_offered(
    models_dir: Path, tmp_path: Path
) -> None:
    root = await anyio.Path(tmp_path).resolve()
    for text in await _media_descriptions(models_dir, transport="http", media_roots=[str(tmp_path)]):
        assert f"a file path inside {root} on the server's machine (preferred)" in text


@pytest.mark.parametrize(
    ("transport", "where"), [("stdio", "returned inline."), ("http", "server's machine.")]
)
async def test_speak_names_its_inline_limit_and_where_longer_audio_goes(
    models_dir: Path, tmp_path: Path, transport: str, where: str
) -> None:
    settings = make_settings(
        models_dir, transport=transport, max_inline_audio_bytes=480_000, output_dir=tmp_path
    )
    app = OpenArcApp(settings)
    async with app, Client(build_mcp_server(app)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    text = tools["speak"].input_schema["properties"]["output_path"]["description"]
    assert f"output directory ({tmp_path})" in text
    assert "Audio over 480000 bytes (about 10 s of WAV)" in text and text.endswith(where)
