"""Continuous batching of ``generate`` on one real LLM (SmolLM2): several requests decode together,
each streams its own text, stop strings and cancellation work per request, an unload answers all of
them, and the one-at-a-time mode stays available by configuration."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.engines.base import StopFlag
from openarc_mcp.engines.batched_llm import ContinuousBatcher, SchedulerSettings, _Request
from openarc_mcp.engines.llm import BatchedLLMEngine, IsolatedLLMEngine, batching_by_default
from openarc_mcp.errors import EngineFault, InvalidRequestError, ModelLoadError, ModelUnloadedError
from openarc_mcp.schema import GenerateResult, GenerationOptions, LoadRequest, ModelType, RuntimeValue
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import make_settings, structured

pytestmark = pytest.mark.anyio

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about rain.",
    "List three fruits.",
    "Explain gravity in one sentence.",
)
GREEDY = GenerationOptions(max_tokens=48, temperature=0)


def _shared_start(first: str, second: str) -> int:
    """How many leading characters two texts have in common."""
    return next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )


@pytest.fixture
async def app(models_dir: Path) -> AsyncIterator[OpenArcApp]:
    async with OpenArcApp(make_settings(models_dir)) as opened:
        yield opened


async def _load(
    app: OpenArcApp, name: str, llm_path: Path, config: dict[str, RuntimeValue]
) -> BatchedLLMEngine:
    await app.load_model(
        LoadRequest(model_name=name, model_path=llm_path, model_type=ModelType.LLM, runtime_config=config)
    )
    entry = app.registry.get(name)
    assert entry is not None and entry.worker is not None
    engine = entry.worker.engine
    assert isinstance(engine, BatchedLLMEngine)
    return engine


@pytest.mark.parametrize(
    ("prompt", "options", "raw"),
    [
        ("Name three colors of the rainbow.", GenerationOptions(max_tokens=40, temperature=0), False),
        ("The capital of France is", GenerationOptions(max_tokens=24, temperature=0), True),
        (
            "Name three colors of the rainbow.",
            GenerationOptions(max_tokens=60, temperature=0, stop=["rainbow"]),
            False,
        ),
    ],
    ids=["chat", "raw-prompt", "stop-string"],
)
def test_a_lone_request_equals_llm_pipeline(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
    prompt: str,
    options: GenerationOptions,
    raw: bool,
) -> None:
    batched, single = llm_engines
    streamed: list[str] = []
    got = batched.generate(prompt, options, streamed.append, StopFlag(), apply_chat_template=not raw)
    expected = single.generate(prompt, options, lambda _: None, StopFlag(), apply_chat_template=not raw)
    assert got.text == expected.text and got.text
    assert "".join(streamed) == got.text
    assert (got.finish_reason, got.usage) == (expected.finish_reason, expected.usage)
    assert got.metrics.ttft_ms > 0 and got.metrics.total_ms >= got.metrics.ttft_ms


def test_concurrent_requests_decode_together_each_with_its_own_text(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
) -> None:
    batched, _ = llm_engines
    alone = {prompt: batched.generate(prompt, GREEDY, lambda _: None, StopFlag()).text for prompt in PROMPTS}
    assert len({text[:16] for text in alone.values()}) == len(PROMPTS)  # the check below can tell them apart
    results: dict[str, Any] = {}
    streamed: dict[str, list[str]] = {prompt: [] for prompt in PROMPTS}

    def run(prompt: str) -> None:
        results[prompt] = batched.generate(prompt, GREEDY, streamed[prompt].append, StopFlag())

    steps_before = batched.steps
    threads = [threading.Thread(target=run, args=(prompt,)) for prompt in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    steps = batched.steps - steps_before
    tokens = sum(result.usage.completion_tokens for result in results.values())
    assert len(results) == len(PROMPTS)
    for prompt, result in results.items():
        assert "".join(streamed[prompt]) == result.text  # no text crossed over to another request
        # Batched arithmetic may drift from a lone run, even at the second token where two are close
        # (CI's machine: "Imagine gravity" beside "Imagine walking" alone); the answer must still be
        # recognisably this prompt's: it starts with the lone answer's first word and follows that
        # answer further than it follows any other prompt's.
        own = _shared_start(result.text, alone[prompt])
        others = max(_shared_start(result.text, alone[other]) for other in PROMPTS if other != prompt)
        assert own >= len(alone[prompt].split(" ")[0]) and own > others, (prompt, result.text, alone[prompt])
    assert steps < 0.75 * tokens, (steps, tokens)  # one step advanced several requests


def test_a_stopped_request_leaves_the_others_running(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
) -> None:
    batched, _ = llm_engines
    long = GenerationOptions(max_tokens=400, temperature=0)
    stop, started = StopFlag(), threading.Event()
    results: dict[str, Any] = {}

    def stopped() -> None:
        results["stopped"] = batched.generate(
            "Write a long story about a dragon.", long, lambda _: started.set(), stop
        )

    def other(prompt: str) -> None:
        results[prompt] = batched.generate(prompt, GREEDY, lambda _: None, StopFlag())

    threads = [threading.Thread(target=stopped)] + [
        threading.Thread(target=other, args=(p,)) for p in PROMPTS[:2]
    ]
    for thread in threads:
        thread.start()
    assert started.wait(60)
    stop.set("abandoned")
    for thread in threads:
        thread.join(timeout=120)
    assert results["stopped"].finish_reason == "cancelled"
    assert results["stopped"].usage.completion_tokens < 400
    for prompt in PROMPTS[:2]:
        assert results[prompt].finish_reason in ("stop", "length") and results[prompt].text


async def test_concurrent_generate_calls_stream_and_finish_through_mcp(
    app: OpenArcApp, llm_path: Path
) -> None:
    engine = await _load(app, "batcher", llm_path, {})
    pieces: dict[str, list[str]] = {prompt: [] for prompt in PROMPTS}
    answers: dict[str, dict[str, Any]] = {}
    peak_running = 0

    async with Client(build_mcp_server(app)) as client:

        async def call(prompt: str) -> None:
            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                pieces[prompt].append(message or "")

            result = await client.call_tool(
                "generate",
                {"model": "batcher", "prompt": prompt, "max_tokens": 48, "temperature": 0},
                progress_callback=on_progress,
            )
            answers[prompt] = structured(result)

        async def watch() -> None:
            nonlocal peak_running
            while len(answers) < len(PROMPTS):
                peak_running = max(peak_running, (await app.model_details("batcher")).running_requests)
                await anyio.sleep(0.005)

        steps_before = engine.steps
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                for prompt in PROMPTS:
                    group.start_soon(call, prompt)
        details = await app.model_details("batcher")
    assert peak_running >= 2
    tokens = sum(answer["usage"]["completion_tokens"] for answer in answers.values())
    assert engine.steps - steps_before < 0.75 * tokens
    for prompt, answer in answers.items():
        assert answer["text"] and pieces[prompt], prompt
        assert "".join(pieces[prompt]) == answer["text"]
    assert details.engine is not None and details.engine["batching"] == "continuous"
    assert details.running_requests == 0 and details.queued_requests == 0


async def test_requests_beyond_max_concurrent_wait_in_the_queue(app: OpenArcApp, llm_path: Path) -> None:
    await _load(app, "pair", llm_path, {"max_concurrent_requests": 2})
    seen: set[tuple[int, int]] = set()
    results: list[GenerateResult] = []

    async def call(prompt: str) -> None:
        results.append(await app.generate("pair", prompt, None, GREEDY))

    async def watch() -> None:
        while len(results) < len(PROMPTS):
            details = await app.model_details("pair")
            seen.add((details.running_requests, details.queued_requests))
            await anyio.sleep(0.005)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            for prompt in PROMPTS:
                group.start_soon(call, prompt)
    assert max(running for running, _ in seen) == 2
    assert any(queued > 0 for _, queued in seen)
    assert all(result.text for result in results)


async def test_unload_answers_every_running_request_and_ends_the_stepping_thread(
    app: OpenArcApp, llm_path: Path
) -> None:
    steppers_before = _steppers()
    await _load(app, "gone", llm_path, {})
    assert len(_steppers() - steppers_before) == 1
    stories = [
        f"Write a very long story about {topic}." for topic in ("a dragon", "the sea", "a city", "a robot")
    ]
    outcomes: list[Any] = []
    streaming: set[str] = set()
    all_streaming = anyio.Event()

    async def call(prompt: str) -> None:
        async def on_progress(message: str, value: float | None) -> None:
            streaming.add(prompt)
            if len(streaming) == len(stories):
                all_streaming.set()

        try:
            options = GenerationOptions(max_tokens=2000, temperature=0)
            outcomes.append(await app.generate("gone", prompt, None, options, on_progress))
        except Exception as exc:
            outcomes.append(exc)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for prompt in stories:
                group.start_soon(call, prompt)
            await all_streaming.wait()
            assert (await app.model_details("gone")).running_requests == len(stories)
            await app.unload_model("gone")
    assert len(outcomes) == len(stories)
    assert all(isinstance(outcome, ModelUnloadedError) for outcome in outcomes), outcomes
    assert _steppers() == steppers_before


def _steppers() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("openarc-engine-")}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"batching": "yes"}, "'batching' must be true or false"),
        ({"max_concurrent_requests": 0}, "'max_concurrent_requests' must be a whole number from 1 to 256"),
        ({"kv_cache_gb": 1.5}, "'kv_cache_gb' must be a whole number from 0 to 1024"),
        ({"max_batched_tokens": 8}, "'max_batched_tokens' must be a whole number from 16"),
        ({"prefix_caching": 1}, "'prefix_caching' must be true or false"),
        ({"batching": False, "kv_cache_gb": 2}, "apply to continuous batching only"),
        ({"batchin": True}, "unknown option 'batchin'"),
    ],
)
async def test_batching_options_are_checked(
    app: OpenArcApp, llm_path: Path, config: dict[str, RuntimeValue], message: str
) -> None:
    with pytest.raises((InvalidRequestError, ModelLoadError), match=message):
        await app.load_model(
            LoadRequest(
                model_name="checked", model_path=llm_path, model_type=ModelType.LLM, runtime_config=config
            )
        )


async def test_one_at_a_time_mode_by_configuration(app: OpenArcApp, llm_path: Path) -> None:
    await app.load_model(
        LoadRequest(
            model_name="serial",
            model_path=llm_path,
            model_type=ModelType.LLM,
            runtime_config={"batching": False},
        )
    )
    details = await app.model_details("serial")
    assert details.engine is not None and "batching" not in details.engine
    entry = app.registry.get("serial")
    assert entry is not None and entry.worker is not None
    assert isinstance(entry.worker.engine, IsolatedLLMEngine)  # one at a time, in a process of its own
    assert details.engine["process_id"] not in (None, os.getpid())
    answer = await app.generate("serial", "What is the capital of France?", None, GREEDY)
    assert "Paris" in answer.text


async def test_openvino_properties_reach_the_batching_pipeline(
    app: OpenArcApp, llm_path: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "compile-cache"
    config: dict[str, RuntimeValue] = {
        "PERFORMANCE_HINT": "LATENCY",
        "CACHE_DIR": str(cache),
        "kv_cache_gb": 1,
    }
    await _load(app, "tuned", llm_path, config)
    assert any(cache.iterdir())  # the pipeline compiled into the cache it was given
    answer = await app.generate("tuned", "What is the capital of France?", None, GREEDY)
    assert "Paris" in answer.text


def test_batching_is_off_by_default_for_gguf_files_and_npu(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert not batching_by_default(gguf, "CPU")
    assert not batching_by_default(tmp_path, "NPU")
    assert batching_by_default(tmp_path, "CPU") and batching_by_default(tmp_path, "GPU.1")


def test_a_request_the_scheduler_ignores_is_an_error_not_a_short_answer() -> None:
    """GenAI's scheduler marks a request IGNORED when it cannot fit the KV cache (a fixed
    ``kv_cache_gb`` too small for its prompt); its output is empty or cut, so it must not be
    answered as a normal finish. (A fixed cache of whole GB is too large for SmolLM2 to reach this,
    so the pipeline's handle is stood in for here.)"""

    class IgnoredHandle:
        def can_read(self) -> bool:
            return False

        def get_status(self) -> Any:
            return SimpleNamespace(name="IGNORED")

        def get_perf_metrics(self) -> Any:
            return SimpleNamespace(get_num_generated_tokens=lambda: 0)

    batcher = object.__new__(ContinuousBatcher)  # the collection step alone, without a pipeline
    batcher.settings = SchedulerSettings(kv_cache_gb=1)
    batcher._pipe = None  # no pipeline: heap scans for live engines pass it by
    requests = [
        _Request(
            input_ids=np.zeros((1, 3)), config=None, on_text=lambda _: None, stop=StopFlag(), submitted=0.0
        )
        for _ in range(2)
    ]
    ignored, cancelled = requests
    cancelled.cancelled = True  # GenAI reports a request it was told to cancel as ignored too
    for request in requests:
        request.handle = IgnoredHandle()
    batcher._active = list(requests)
    for request in requests:
        batcher._collect(request)
    assert ignored.done.is_set() and cancelled.done.is_set() and batcher._active == []
    assert isinstance(ignored.error, InvalidRequestError), ignored.error
    assert "did not fit the model's KV cache (kv_cache_gb=1)" in str(ignored.error)
    assert cancelled.error is None and cancelled.output is not None
    assert cancelled.output.finish_reason == "cancelled"


class _FailingStep:
    """A GenAI pipeline whose ``step()`` raises, as it does on a schema xgrammar cannot convert."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def step(self) -> None:
        raise RuntimeError("a fault in step()")


@pytest.mark.parametrize("where", ["step", "collect"])
def test_a_failed_stepping_loop_says_so_and_marks_the_model_ended(
    llm_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A failure in ``step()`` (after which GenAI's pipeline takes no request) or around it ends
    the stepping loop for good: every later call must say why, and the server's proxy must report
    the model ended, so that the app marks it failed and loads it again on its next use."""
    batcher = ContinuousBatcher(llm_path, "CPU", {}, SchedulerSettings())
    try:

        def broken_collect(request: Any) -> None:
            raise RuntimeError("a fault outside step()")

        if where == "step":
            monkeypatch.setattr(batcher, "_pipe", _FailingStep(batcher._pipe))
        else:
            monkeypatch.setattr(batcher, "_collect", broken_collect)
        with pytest.raises(EngineFault, match="the generation loop failed: RuntimeError"):
            batcher.generate("Hi", GenerationOptions(max_tokens=4), lambda _: None, StopFlag())
        assert batcher.broken == "the model's generation loop failed (RuntimeError)"
        with pytest.raises(
            EngineFault, match=r"generation loop failed \(RuntimeError\); the model is loaded again"
        ):
            batcher.generate("Hi", GenerationOptions(max_tokens=4), lambda _: None, StopFlag())
    finally:
        batcher.close()
    proxy = object.__new__(BatchedLLMEngine)  # the server's side, as an answered call updates it
    proxy._ended, proxy.steps, proxy.broken = None, 0, None
    proxy._pipe = None  # no process: heap scans for live engines (test_races.py) pass it by
    before = proxy.ended
    proxy._absorb({"steps": 7, "broken": batcher.broken})
    assert before is None
    assert proxy.ended == batcher.broken and proxy.steps == 7


def test_an_answer_ends_where_the_context_ends(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
) -> None:
    """SmolLM2 holds 8,192 tokens: a prompt of ~8,100 with max_tokens 400 went ~300 tokens past
    them (newlines, no warning); the answer now stops at the context's end, with 'length'."""
    options = GenerationOptions(max_tokens=400, temperature=0)
    prompt = "hello " * 8080
    for engine in llm_engines:
        assert engine.token_limit == 8192
        output = engine.generate(prompt, options, lambda _: None, StopFlag())
        used = output.usage.prompt_tokens + output.usage.completion_tokens
        assert output.usage.prompt_tokens > 8000 and used <= 8192, output.usage
        assert output.finish_reason == "length"
