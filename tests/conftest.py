"""Shared fixtures: the real SmolLM2 model prepared once, an app with it loaded, MCP clients."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.engines.llm import BatchedLLMEngine, IsolatedLLMEngine, build_llm
from openarc_mcp.library import (
    DEFAULT_EMBEDDING,
    DEFAULT_LLM,
    DEFAULT_RERANKER,
    DEFAULT_TTS,
    DEFAULT_VLM,
    DEFAULT_WHISPER,
)
from openarc_mcp.library.prepare import prepare_models
from openarc_mcp.schema import LoadRequest
from openarc_mcp.settings import Settings, default_models_dir
from openarc_mcp.transports.mcp_server import build_mcp_server

LLM = DEFAULT_LLM
EMBEDDER = DEFAULT_EMBEDDING
RERANKER = DEFAULT_RERANKER
TTS = DEFAULT_TTS
WHISPER = DEFAULT_WHISPER
WHISPER_EN = "whisper-tiny-en"
VLM = DEFAULT_VLM  # random weights: plumbing only


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The models directory with the real catalogue models prepared (a no-op when already done)."""
    folder = Path(os.environ.get("OPENARC_MODELS_DIR") or default_models_dir(os.environ))
    prepare_models([LLM, EMBEDDER, RERANKER, TTS, WHISPER, WHISPER_EN, VLM], folder)
    return folder


@pytest.fixture(scope="session")
def llm_path(models_dir: Path) -> Path:
    return models_dir / LLM


@pytest.fixture(scope="module")
def llm_engines(llm_path: Path) -> Iterator[tuple[BatchedLLMEngine, IsolatedLLMEngine]]:
    """SmolLM2 as a continuous-batching engine and as a one-at-a-time engine (each in its process)."""
    batched = build_llm(llm_path, "CPU", {})
    single = build_llm(llm_path, "CPU", {"batching": False})
    assert isinstance(batched, BatchedLLMEngine) and isinstance(single, IsolatedLLMEngine)
    yield batched, single
    batched.close()
    single.close()


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    """Settings for in-process apps; tests build model folders in the temporary directory, so
    load_model may load from there too (test_model_roots.py checks the confinement itself)."""
    overrides.setdefault("model_roots", [tempfile.gettempdir()])
    return Settings(models_dir=models_dir, **overrides)


@pytest.fixture(scope="session")
async def shared_app(models_dir: Path) -> AsyncIterator[OpenArcApp]:
    """One app with the default LLM loaded, for tests that do not change what is loaded."""
    async with OpenArcApp(make_settings(models_dir)) as app:
        for name in (LLM, EMBEDDER, RERANKER, TTS, WHISPER, WHISPER_EN, VLM):
            await app.load_model(LoadRequest(model_name=name))
        yield app


@pytest.fixture
async def client(shared_app: OpenArcApp) -> AsyncIterator[Client]:
    async with Client(build_mcp_server(shared_app)) as connected:
        yield connected


@pytest.fixture
async def fresh_app(models_dir: Path) -> AsyncIterator[OpenArcApp]:
    """An app with nothing loaded, for tests that load and unload."""
    async with OpenArcApp(make_settings(models_dir)) as app:
        yield app


def structured(result: Any) -> dict[str, Any]:
    """The structured content of a successful tool result."""
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


def text_of(result: Any) -> str:
    """All text blocks of a tool result, joined."""
    return " ".join(getattr(block, "text", "") for block in result.content)
