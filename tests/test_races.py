"""Seeded lifecycle races: load, unload, inference, cancellation and disconnects interleaved at random.

Each interleaving (seed 0, 1, 2, ...) starts a handful of operations at random moments, all at once,
on four names backed by real models (two embedders, a reranker, an LLM; a second LLM name rarely).
A "disconnect" cancels several requests of one caller together, as a transport does when its
connection drops. Every operation must end before its deadline with a result or a user error
(never another exception); afterwards, once the loads a cancelled caller left behind have settled,
the registry must match reality: every model it calls loaded answers, every live engine belongs to
a loaded model, no name is stuck loading or unloading, and no thread is left behind.
``OPENARC_RACE_SEEDS`` sets how many interleavings run (default 200); a failure names its seed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from openarc_mcp.app import OpenArcApp
from openarc_mcp.engines.embedding import EmbeddingEngine
from openarc_mcp.engines.llm import BatchedLLMEngine
from openarc_mcp.engines.rerank import RerankEngine
from openarc_mcp.errors import UserError
from openarc_mcp.schema import GenerationOptions, LoadRequest, ModelStatus, ModelType

from .conftest import EMBEDDER, LLM, RERANKER, make_settings

pytestmark = pytest.mark.anyio

SEEDS = int(os.environ.get("OPENARC_RACE_SEEDS", "200"))
OPERATION_DEADLINE_S = 60.0
SETTLE_DEADLINE_S = 60.0
NAMES: dict[str, tuple[str, ModelType]] = {
    "e1": (EMBEDDER, ModelType.EMBEDDING),
    "e2": (EMBEDDER, ModelType.EMBEDDING),
    "r1": (RERANKER, ModelType.RERANKER),
    "g1": (LLM, ModelType.LLM),
    "g2": (LLM, ModelType.LLM),
}
ENGINE_CLASSES: dict[ModelType, type[Any]] = {
    ModelType.EMBEDDING: EmbeddingEngine,
    ModelType.RERANKER: RerankEngine,
    ModelType.LLM: BatchedLLMEngine,
}
TALLY: Counter[str] = Counter()


@dataclass
class Race:
    app: OpenArcApp
    models_dir: Path
    rng: random.Random

    def name(self, lifecycle: bool) -> str:
        """A name to act on: g2 (an LLM load, seconds) only rarely, g1 never loaded or unloaded."""
        if lifecycle:
            return "g2" if self.rng.random() < 0.04 else self.rng.choice(["e1", "e2", "r1"])
        return self.rng.choice(["e1", "e2", "r1", "g1", "g1", "g2"])

    async def load(self, name: str) -> None:
        path, model_type = NAMES[name]
        request = LoadRequest(model_name=name, model_path=self.models_dir / path, model_type=model_type)
        await self.app.load_model(request)

    async def use(self, name: str) -> None:
        model_type = NAMES[name][1]
        if model_type is ModelType.EMBEDDING:
            await self.app.embed(name, ["a text", "another"], "document", None)
        elif model_type is ModelType.RERANKER:
            await self.app.rerank(name, "query", ["one", "two", "three"], None)
        else:
            options = GenerationOptions(max_tokens=self.rng.randint(1, 6), temperature=0)
            await self.app.generate(name, "Count: one, two,", None, options)

    def operation(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        kind = self.rng.choices(["load", "unload", "use", "cancel", "disconnect"], weights=[3, 2, 5, 2, 1])[0]
        if kind == "load":
            name = self.name(lifecycle=True)
            return f"load {name}", lambda: self.load(name)
        if kind == "unload":
            name = self.name(lifecycle=True)
            return f"unload {name}", lambda: _unload(self.app, name)
        if kind == "use":
            name = self.name(lifecycle=False)
            return f"use {name}", lambda: self.use(name)
        names = [self.name(lifecycle=False) for _ in range(1 if kind == "cancel" else 3)]
        after = self.rng.uniform(0, 0.08)
        return f"{kind} {','.join(names)} after {after:.3f}s", lambda: self.cancelled(names, after)

    async def cancelled(self, names: list[str], after: float) -> None:
        """Requests (one caller's, for a disconnect) cancelled together ``after`` seconds in."""
        with anyio.move_on_after(after):
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(_tolerating_user_errors, self.use, name)


async def _unload(app: OpenArcApp, name: str) -> None:
    await app.unload_model(name)


async def _tolerating_user_errors(call: Callable[[str], Awaitable[None]], name: str) -> None:
    with contextlib.suppress(UserError):
        await call(name)


@pytest.fixture(scope="module")
async def race_app(models_dir: Path) -> AsyncIterator[OpenArcApp]:
    async with OpenArcApp(make_settings(models_dir, auto_load=False)) as app:
        yield app


async def _run_one(race: Race, label: str, call: Callable[[], Awaitable[None]], log: list[str]) -> None:
    await anyio.sleep(race.rng.uniform(0, 0.05))
    try:
        with anyio.fail_after(OPERATION_DEADLINE_S):
            await call()
        outcome = "ok"
    except UserError as exc:
        outcome = f"refused: {type(exc).__name__}"
    except TimeoutError:
        outcome = "HUNG"
    except Exception as exc:  # anything but a user error is a bug: recorded, then failed below
        outcome = f"CRASH: {type(exc).__name__}: {exc}"
    TALLY[outcome.split(":")[0]] += 1
    log.append(f"{label} -> {outcome}")


async def _settled(app: OpenArcApp) -> None:
    """Wait until no model is loading or unloading, nor an engine being built for one unloaded
    meanwhile (loads go on after their caller leaves, and are freed once built)."""
    busy = {ModelStatus.LOADING, ModelStatus.UNLOADING}
    for _ in range(int(SETTLE_DEADLINE_S / 0.02)):  # the registry has no event for "all settled"
        statuses = [entry.record.status for entry in app.registry.entries()]
        if not app.constructions_in_flight and not busy.intersection(statuses):
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"still loading or unloading: {[e.record for e in app.registry.entries()]}")


def _live_engines() -> dict[type[Any], list[Any]]:
    """Engines still holding a pipeline in this process (other apps' too), by class; one heap scan."""
    gc.collect()
    found: dict[type[Any], list[Any]] = {kind: [] for kind in ENGINE_CLASSES.values()}
    for candidate in gc.get_objects():
        # type(), not isinstance(): the latter asks foreign objects (torch's lazy modules) for __class__
        engines = found.get(type(candidate))
        if engines is not None and candidate._pipe is not None:
            engines.append(candidate)
    return found


async def _check_registry_matches_reality(app: OpenArcApp, race: Race, others: set[int]) -> None:
    """``others``: engines of other apps in this process (session fixtures), left out of the count."""
    loaded = {e.spec.name: e for e in app.registry.entries() if e.record.status is ModelStatus.LOADED}
    for entry in app.registry.entries():
        assert entry.record.status is ModelStatus.LOADED, entry.record  # nothing failed or stuck
        assert entry.worker is not None
    for name in loaded:
        await race.use(name)  # every model the registry calls loaded answers
    for name in set(NAMES) - set(loaded):
        with pytest.raises(UserError, match="no model named"):
            await race.use(name)
    live_engines = _live_engines()
    for model_type, engine_class in ENGINE_CLASSES.items():
        live = [engine for engine in live_engines[engine_class] if id(engine) not in others]
        expected = sum(1 for name in loaded if NAMES[name][1] is model_type)
        assert len(live) == expected, (model_type, len(live), sorted(loaded))  # no orphan engine


POOLED = ("AnyIO worker", "ThreadPoolExecutor")  # anyio's and asyncio's bounded pools of idle threads


def _threads() -> Counter[str]:
    """Python threads by kind, the pools' idle threads left out (they are reused, not leaked)."""
    return Counter(t.name for t in threading.enumerate() if not t.name.startswith(POOLED))


async def test_random_interleavings_keep_the_registry_true(race_app: OpenArcApp, models_dir: Path) -> None:
    threads_before = _threads()
    others = {id(engine) for engines in _live_engines().values() for engine in engines}
    await Race(race_app, models_dir, random.Random(-1)).load("g1")
    for seed in range(SEEDS):
        race = Race(race_app, models_dir, random.Random(seed))
        operations = [race.operation() for _ in range(race.rng.randint(3, 7))]
        log: list[str] = []
        async with anyio.create_task_group() as group:
            for label, call in operations:
                group.start_soon(_run_one, race, label, call, log)
        problems = [line for line in log if "HUNG" in line or "CRASH" in line]
        assert not problems, f"seed {seed}: {log}"
        await _settled(race_app)
        await _check_registry_matches_reality(race_app, race, others)
        TALLY["interleavings"] += 1
    print(f"\nrace summary: {dict(sorted(TALLY.items()))}")  # noqa: T201 (figures for docs/reliability.md)
    for entry in race_app.registry.entries():
        await race_app.unload_model(entry.spec.name)
    assert _threads() == threads_before, (threads_before, _threads())
