"""The serving commands keep the garbage collector's full passes short (``openarc_mcp/heap.py``):
what is alive after start-up and after each load is frozen out of the collector's view, an unload
gives everything back long enough to collect the unloaded model's reference cycles, and apps used
in process (tests, benchmarks) are left alone. Real all-MiniLM-L6-v2 loads."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openarc_mcp import heap
from openarc_mcp.app import OpenArcApp
from openarc_mcp.schema import LoadRequest

from .conftest import EMBEDDER, make_settings
from .stdio_session import RawSession, server_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def managed_heap() -> Iterator[None]:
    with heap.managing():
        yield


async def test_an_app_used_in_process_leaves_the_collector_alone(fresh_app: OpenArcApp) -> None:
    assert not heap.managed()
    await fresh_app.load_model(LoadRequest(model_name=EMBEDDER))
    assert gc.get_freeze_count() == 0
    await fresh_app.unload_model(EMBEDDER)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("managed_heap")
async def test_loads_are_frozen_and_an_unloaded_model_in_a_cycle_is_still_freed(models_dir: Path) -> None:
    async with OpenArcApp(make_settings(models_dir)) as app:
        frozen_at_start = gc.get_freeze_count()
        await app.load_model(LoadRequest(model_name=EMBEDDER))
        assert gc.get_freeze_count() > frozen_at_start  # the engine and what its load imported
        assert len(gc.get_objects()) < gc.get_freeze_count() // 10  # a full pass walks few objects
        engine = _engine(app, EMBEDDER)
        engine_ref = weakref.ref(engine)
        engine.cycle = [engine]  # the worst case: only the cyclic collector can free it
        del engine
        await app.unload_model(EMBEDDER)
        assert engine_ref() is None, "the unloaded engine stayed frozen in its cycle"
        assert gc.get_freeze_count() > 0  # what survived the unload is frozen again


async def test_a_stdio_server_settles_its_heap_at_start_load_and_unload(
    models_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    env = server_env(models_dir, OPENARC_PRELOAD=EMBEDDER, OPENARC_LOG_LEVEL="DEBUG")
    async with RawSession(env, stderr=log) as session:
        await session.initialize()
        answer = await session.request("tools/call", {"name": "embed", "arguments": {"texts": "x"}})
        assert not answer["result"].get("isError"), answer
        unloaded = await session.request(
            "tools/call", {"name": "unload_model", "arguments": {"model_name": EMBEDDER}}
        )
        assert not unloaded["result"].get("isError"), unloaded
        await session.close_stdin()
        assert await session.process.wait() == 0
    settled = [int(count) for count in re.findall(r"heap settled: (\d+) objects", log.read_text())]
    assert len(settled) >= 3, settled  # start-up, the preload, the unload
    assert max(settled) > 50_000, settled  # the SDK, pydantic and OpenVINO's objects


def _engine(app: OpenArcApp, name: str) -> Any:
    entry = app.registry.get(name)
    assert entry is not None and entry.worker is not None
    return entry.worker.engine
