"""Engines in child processes (engines/isolated.py): Kokoro, Whisper, the VLM and the batching LLM.

Real models: the pipelines run in spawned processes; calls, stops and errors cross the pipe, an
unload ends the process (all its memory with it), and a process that dies fails its call with a
message that says what to do, after which the model loads again.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from openarc_mcp.app import OpenArcApp
from openarc_mcp.engines import isolated
from openarc_mcp.engines.base import StopFlag
from openarc_mcp.engines.isolated import ProcessEngine
from openarc_mcp.engines.tts import IsolatedTTSEngine, speech_chunks
from openarc_mcp.errors import EngineFault, InvalidRequestError
from openarc_mcp.schema import LoadRequest
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import TTS, VLM, WHISPER_EN, make_settings, structured, text_of

pytestmark = pytest.mark.anyio

SENTENCE = "The lighthouse keeper climbed the long stair and lit the lamp against the coming storm."
LONG_TEXT = " ".join([SENTENCE] * 20)  # several synthesis chunks (speech_chunks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until_gone(pid: int, deadline_s: float = 10.0) -> None:
    give_up = time.monotonic() + deadline_s
    while _alive(pid):
        assert time.monotonic() < give_up, f"process {pid} is still there"
        time.sleep(0.05)


async def _process_id(app: OpenArcApp, name: str) -> int:
    engine = (await app.model_details(name)).engine or {}
    pid = engine.get("process_id")
    assert isinstance(pid, int), engine
    return pid


@pytest.fixture(scope="module")
def tts_engine(models_dir: Path) -> Iterator[IsolatedTTSEngine]:
    engine = IsolatedTTSEngine(models_dir / TTS, "CPU", {})
    yield engine
    engine.close()


async def test_each_model_has_a_process_that_its_unload_ends(fresh_app: OpenArcApp) -> None:
    for name in (WHISPER_EN, TTS):
        await fresh_app.load_model(LoadRequest(model_name=name))
    pids = {name: await _process_id(fresh_app, name) for name in (WHISPER_EN, TTS)}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert all(_alive(pid) for pid in pids.values())
    await fresh_app.unload_model(WHISPER_EN)
    assert not _alive(pids[WHISPER_EN]) and _alive(pids[TTS])
    await fresh_app.unload_model(TTS)
    assert not _alive(pids[TTS])


def test_a_stop_reaches_the_call_running_in_the_child(tts_engine: IsolatedTTSEngine) -> None:
    chunks = speech_chunks(LONG_TEXT)
    assert len(chunks) >= 4
    first_chunk = tts_engine.synthesize(chunks[0], tts_engine.default_voice, "en-us", 1.0, StopFlag())
    stop = StopFlag()
    stop.set("caller left")  # sent to the child as soon as the call is under way
    stopped = tts_engine.synthesize(LONG_TEXT, tts_engine.default_voice, "en-us", 1.0, stop)
    assert len(stopped.audio) <= len(first_chunk.audio) * 1.05  # at most the chunk under way


def test_user_errors_cross_the_pipe_as_themselves(tts_engine: IsolatedTTSEngine) -> None:
    with pytest.raises(InvalidRequestError, match="unknown voice 'nobody'"):
        tts_engine.synthesize("Hello.", "nobody", "en-us", 1.0, StopFlag())
    speech = tts_engine.synthesize("Still here.", tts_engine.default_voice, "en-us", 1.0, StopFlag())
    assert len(speech.audio) > 0  # the engine serves on after the error


async def test_a_process_that_dies_fails_its_call_and_the_model_loads_again(fresh_app: OpenArcApp) -> None:
    await fresh_app.load_model(LoadRequest(model_name=TTS))
    pid = await _process_id(fresh_app, TTS)
    async with Client(build_mcp_server(fresh_app)) as client:
        outcome: list[object] = []

        async def speak_long() -> None:
            outcome.append(await client.call_tool("speak", {"model": TTS, "text": LONG_TEXT}))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(speak_long)
                await anyio.sleep(0.5)  # the first chunk is being synthesised
                os.kill(pid, signal.SIGKILL)
        result = outcome[0]
        assert getattr(result, "is_error", False), result
        assert "process ended during the request; the model is loaded again on its next use" in text_of(
            result
        )
        await fresh_app.unload_model(TTS)
        assert not _alive(pid)  # reaped, not left a zombie
        await fresh_app.load_model(LoadRequest(model_name=TTS))
        assert await _process_id(fresh_app, TTS) != pid
        data = structured(await client.call_tool("speak", {"model": TTS, "text": "Back again."}))
        assert data["duration_s"] > 0.3


async def test_a_model_whose_process_was_killed_is_loaded_again_on_its_next_use(
    fresh_app: OpenArcApp, caplog: pytest.LogCaptureFixture
) -> None:
    await fresh_app.load_model(LoadRequest(model_name=TTS))
    pid = await _kill_model_process(fresh_app)
    caplog.set_level(logging.INFO, logger="openarc_mcp.app")
    caplog.clear()  # the loads counted below are those after the kill
    durations: list[float] = []
    async with Client(build_mcp_server(fresh_app)) as client:
        wrong = await client.call_tool("generate", {"model": TTS, "prompt": "Hi"})
        assert wrong.is_error and "this call needs a model of type 'llm'" in text_of(wrong), text_of(wrong)
        record = next(record for record in await fresh_app.list_models() if record.name == TTS)
        assert record.status == "failed", record  # a call that cannot use the model does not load it

        async def speak() -> None:
            result = await client.call_tool("speak", {"model": TTS, "text": "Back again."})
            durations.append(structured(result)["duration_s"])

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:  # two calls at once: one load serves both
                group.start_soon(speak)
                group.start_soon(speak)
    assert len(durations) == 2 and min(durations) > 0.3, durations
    assert await _process_id(fresh_app, TTS) != pid
    loads = [r for r in caplog.records if r.getMessage().startswith(f"model '{TTS}' loaded in")]
    assert len(loads) == 1, [r.getMessage() for r in caplog.records]  # one load served both calls
    record = next(record for record in await fresh_app.list_models() if record.name == TTS)
    assert record.status == "loaded" and record.error is None, record


async def test_without_auto_load_a_killed_model_says_so_and_loads_again_without_an_unload(
    models_dir: Path,
) -> None:
    async with OpenArcApp(make_settings(models_dir, auto_load=False)) as app:
        await app.load_model(LoadRequest(model_name=TTS))
        pid = await _kill_model_process(app)
        async with Client(build_mcp_server(app)) as client:
            refused = await client.call_tool("speak", {"model": TTS, "text": "Anyone there?"})
            assert refused.is_error, text_of(refused)
            assert (
                "failed: the model's process ended unexpectedly (exit code -9); load it again to retry"
                in text_of(refused)
            )
            await app.load_model(LoadRequest(model_name=TTS))  # the name is free: no unload first
            assert await _process_id(app, TTS) != pid
            data = structured(await client.call_tool("speak", {"model": TTS, "text": "Back again."}))
            assert data["duration_s"] > 0.3


async def _kill_model_process(app: OpenArcApp) -> int:
    """Kill the TTS model's process and wait until the app's record says it failed, and why."""
    pid = await _process_id(app, TTS)
    os.kill(pid, signal.SIGKILL)
    await anyio.to_thread.run_sync(_wait_until_gone, pid)  # the engine's reader notices and reaps it
    record = next(record for record in await app.list_models() if record.name == TTS)
    assert record.status == "failed", record
    assert record.error is not None and "ended unexpectedly (exit code -9)" in record.error
    return pid


async def test_a_crash_in_the_vlms_process_fails_its_request_not_the_server(
    fresh_app: OpenArcApp, tmp_path: Path
) -> None:
    image = tmp_path / "noise.png"
    pixels = np.random.default_rng(5).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    arguments = {"model": VLM, "image": str(image), "temperature": 0, "max_tokens": 8}
    await fresh_app.load_model(LoadRequest(model_name=VLM))
    pid = await _process_id(fresh_app, VLM)
    assert pid != os.getpid()
    os.kill(pid, signal.SIGSTOP)  # the call below reaches a process that cannot answer it yet

    async def crash_while_it_waits() -> None:
        await anyio.sleep(0.5)
        os.kill(pid, signal.SIGSEGV)  # delivered as it continues: it dies as a native crash would
        os.kill(pid, signal.SIGCONT)

    async with Client(build_mcp_server(fresh_app)) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(crash_while_it_waits)
                crashed = await client.call_tool("describe_image", arguments)
        assert crashed.is_error, text_of(crashed)
        assert "the model's process ended during the request" in text_of(crashed)
        record = next(record for record in await fresh_app.list_models() if record.name == VLM)
        assert record.error is not None and "exit code -11" in record.error, record
        again = structured(await client.call_tool("describe_image", arguments))  # auto-load
    assert again["text"] and again["model"] == VLM
    assert await _process_id(fresh_app, VLM) not in (pid, os.getpid())


async def test_leaving_the_app_ends_its_models_processes(models_dir: Path) -> None:
    async with OpenArcApp(make_settings(models_dir)) as app:
        await app.load_model(LoadRequest(model_name=TTS))
        pid = await _process_id(app, TTS)
    assert not _alive(pid)


def test_an_unguarded_script_is_told_how_to_start_models(models_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"  # the spawned process imports it, and starts a model again
    script.write_text(
        "from pathlib import Path\n"
        "from openarc_mcp.engines.whisper import IsolatedWhisperEngine\n"
        f"IsolatedWhisperEngine(Path({str(models_dir / WHISPER_EN)!r}), 'CPU', {{}})\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "the model's process ended while loading" in run.stderr, run.stderr[-2000:]
    assert "guarded by if __name__ == '__main__'" in run.stderr


class PipeProbe:
    """A stand-in engine for the pipe's own failure paths (the process host, not a model, is tested)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def echo(self, value: object, stop: StopFlag) -> object:
        return value

    def unsendable(self, stop: StopFlag) -> object:
        return threading.Lock()  # cannot be pickled

    def unsendable_by_value_error(self, stop: StopFlag) -> object:
        return ctypes.pointer(ctypes.c_int(1))  # pickling it raises ValueError, not PicklingError

    def until_stopped(self, stop: StopFlag) -> str:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "stopped" if stop.is_set() else "never stopped"

    def deaf(self, seconds: float, stop: StopFlag) -> str:
        time.sleep(seconds)  # as a call stuck in native code: it never looks at its stop flag
        return "finished"

    def close(self) -> None:
        pass


def _call_within(engine: ProcessEngine, method: str, *args: object, seconds: float = 60) -> object:
    """``engine.call`` with a deadline, so that a call left unanswered fails the test, not hangs it."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(engine.call, method, *args, stop=StopFlag()).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)  # a stuck call ends when the engine closes


def test_what_cannot_cross_the_pipe_fails_that_call_only() -> None:
    engine = ProcessEngine(PipeProbe, ("probe",), "probe")
    try:
        assert _call_within(engine, "echo", {"a": [1, 2]}) == {"a": [1, 2]}
        with pytest.raises(EngineFault, match="could not send back"):
            _call_within(engine, "unsendable")
        with pytest.raises(EngineFault, match="could not send back"):  # was never answered
            _call_within(engine, "unsendable_by_value_error")
        with pytest.raises(EngineFault, match="arguments could not be sent"):
            _call_within(engine, "echo", threading.Lock())
        assert _call_within(engine, "echo", 7) == 7  # the process serves on
    finally:
        engine.close()
    assert engine.process_id is None


def test_a_waiting_caller_is_woken_by_its_answer_and_by_its_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's thread sleeps until something happens to its call, not in short polls: with its
    periodic look set far beyond the test's deadlines, an answer and a stop still act at once."""
    monkeypatch.setattr(isolated, "_WAKE_LOOK", 300.0)
    engine = ProcessEngine(PipeProbe, ("probe",), "probe")
    pool = ThreadPoolExecutor(1)
    try:
        assert _call_within(engine, "echo", "back", seconds=20) == "back"
        stop = StopFlag()
        running = pool.submit(engine.call, "until_stopped", stop=stop)
        time.sleep(0.3)
        stop.set("cancelled")
        assert running.result(timeout=20) == "stopped"
        already = StopFlag()
        already.set("cancelled before the call")
        assert pool.submit(engine.call, "until_stopped", stop=already).result(timeout=20) == "stopped"
    finally:
        pool.shutdown(wait=False)
        engine.close()


class QuickToGiveUp(ProcessEngine):
    stop_grace = 1.0


def test_a_call_that_does_not_stop_when_asked_ends_its_process() -> None:
    """A call stuck in native code ignores its stop flag: after the grace period the child is killed,
    so the caller (and every other caller of the model) gets an answer, and the model is loaded
    again on its next use rather than holding its worker and a device slot for good."""
    engine = QuickToGiveUp(PipeProbe, ("probe",), "probe")
    pid = engine.process_id
    assert pid is not None
    try:
        stop = StopFlag()
        pool = ThreadPoolExecutor(1)
        running = pool.submit(engine.call, "deaf", 600.0, stop=stop)
        time.sleep(0.5)
        stop.set("cancelled")
        started = time.monotonic()
        with pytest.raises(EngineFault, match="ended during the request"):
            running.result(timeout=30)
        assert time.monotonic() - started < 10  # the grace (1 s), not the call's 600 s
        pool.shutdown()
        assert engine.ended is not None and "ended unexpectedly" in engine.ended
        _wait_until_gone(pid)
    finally:
        engine.close()


class SlowProbe:
    """A stand-in engine that takes ``seconds`` to build, like a model that compiles for long."""

    def __init__(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        pass


def test_a_build_that_takes_too_long_is_stopped_and_fails_the_load() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish loading within 1 s; it was stopped"):
        ProcessEngine(SlowProbe, (60.0,), "slow", ready_within=1.0)
    assert time.monotonic() - started < 20  # not the build's 60 s
    assert not [child for child in multiprocessing.active_children() if child.name == "openarc-slow"]


_EXIT_DURING_LOAD = """
import multiprocessing, os, sys, threading, time
from openarc_mcp.engines.isolated import ProcessEngine
from tests.test_isolated import SlowProbe

if __name__ == "__main__":
    threading.Thread(target=ProcessEngine, args=(SlowProbe, (BUILD_S,), "slow"), daemon=True).start()
    time.sleep(1.5)  # the child is building
    print(*(child.pid for child in multiprocessing.active_children()), flush=True)
    os._exit(0)  # as `openarc-mcp serve` exits when a thread still loads a model
"""


def test_a_model_process_ends_when_the_server_exits_during_its_load(tmp_path: Path) -> None:
    """Found in the suite's logs: a server that exited while a model loaded (P5 closes it right after
    the handshake) left the model's process compiling for nobody, which then died with a
    BrokenPipeError traceback in the host's log. It now ends within a moment of the server's exit."""
    build_s = 60.0
    script = tmp_path / "exit_during_load.py"
    script.write_text(_EXIT_DURING_LOAD.replace("BUILD_S", repr(build_s)))
    started = time.monotonic()
    # The child inherits the pipes: they reach EOF only once it has ended too.
    run = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=2 * build_s,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    waited = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split(), "no model process had started"
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert waited < build_s / 2, f"the model's process outlived the server by {waited:.0f} s"
