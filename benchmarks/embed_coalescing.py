"""Embedding throughput: 64 concurrent one-text `embed` calls, coalesced vs serialized.

Measured side by side in one run on the real all-MiniLM-L6-v2 (interleaved repetitions, medians),
through the in-memory MCP client, against the raw ``TextEmbeddingPipeline`` embedding the same 64
texts in one batch. Figures are ratios; absolute times depend on the machine.

Beside them, the SDK's own floor: 64 concurrent calls of a trivial tool on a minimal ``MCPServer``
(``minimal_server.py``) through the same client. No server on this SDK can answer 64 calls faster
than that, so ``raw ÷ (raw + floor)`` bounds what coalesced ÷ raw can reach, and
``coalesced - raw - floor`` is what openarc-mcp adds beyond the engine and the SDK.

    python benchmarks/embed_coalescing.py [--models-dir DIR] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import minimal_server
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.library import DEFAULT_EMBEDDING, prepare_models
from openarc_mcp.schema import LoadRequest
from openarc_mcp.settings import Settings, default_models_dir
from openarc_mcp.transports.mcp_server import build_mcp_server

TEXTS = [f"Sentence {i}: the quick brown fox jumps over the lazy dog number {i}." for i in range(64)]


async def _concurrent_calls(client: Client) -> None:
    async with anyio.create_task_group() as group:
        for text in TEXTS:
            group.start_soon(client.call_tool, "embed", {"model": DEFAULT_EMBEDDING, "texts": text})


async def _trivial_calls(client: Client) -> None:
    async with anyio.create_task_group() as group:
        for text in TEXTS:
            group.start_soon(client.call_tool, "echo", {"text": text})


async def _timed(run: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


async def main(models_dir: Path, repeats: int) -> None:
    prepare_models([DEFAULT_EMBEDDING], models_dir)
    medians, batching = await _measure(models_dir, repeats)
    _report(medians, batching)


async def measure(models_dir: Path, repeats: int) -> dict[str, float]:
    """Median seconds of the 64 texts: 'coalesced', 'serialized', 'raw batch' (one engine call) and
    'sdk floor' (64 concurrent trivial calls on a minimal server)."""
    medians, _ = await _measure(models_dir, repeats)
    return medians


async def _measure(models_dir: Path, repeats: int) -> tuple[dict[str, float], object]:
    coalesced_app = OpenArcApp(Settings(models_dir=models_dir))
    serial_app = OpenArcApp(Settings(models_dir=models_dir, batch_max_items=1))
    async with coalesced_app, serial_app:
        for app in (coalesced_app, serial_app):
            await app.load_model(LoadRequest(model_name=DEFAULT_EMBEDDING))
        raw = _raw_pipeline(models_dir / DEFAULT_EMBEDDING)
        async with (
            Client(build_mcp_server(coalesced_app)) as coalesced,
            Client(build_mcp_server(serial_app)) as serial,
            Client(minimal_server.server) as minimal,
        ):
            await _trivial_calls(minimal)  # the first calls build the SDK's validators
            times: dict[str, list[float]] = {
                "coalesced": [],
                "serialized": [],
                "raw batch": [],
                "sdk floor": [],
            }
            for _ in range(repeats):  # interleaved, so drift on a shared machine hits all alike
                times["coalesced"].append(await _timed(lambda: _concurrent_calls(coalesced)))
                times["serialized"].append(await _timed(lambda: _concurrent_calls(serial)))
                times["raw batch"].append(
                    await _timed(lambda: anyio.to_thread.run_sync(raw.embed_documents, TEXTS))
                )
                times["sdk floor"].append(await _timed(lambda: _trivial_calls(minimal)))
        medians = {name: statistics.median(values) for name, values in times.items()}
        return medians, coalesced_app.model_details(DEFAULT_EMBEDDING).batching


def _raw_pipeline(folder: Path) -> Any:
    import openvino_genai

    config = openvino_genai.TextEmbeddingPipeline.Config()
    config.pooling_type = openvino_genai.TextEmbeddingPipeline.PoolingType.MEAN
    config.normalize = True
    config.max_length = 256
    pipeline = openvino_genai.TextEmbeddingPipeline(str(folder), "CPU", config)
    pipeline.embed_documents(["warm-up"])
    return pipeline


def _report(medians: dict[str, float], batching: object) -> None:
    out = sys.stdout
    out.write("| measure | median s | texts/s |\n|---|---|---|\n")
    for name, seconds in medians.items():
        out.write(f"| {name} | {seconds:.3f} | {len(TEXTS) / seconds:.0f} |\n")
    out.write(f"\ncoalesced ÷ serialized throughput: {medians['serialized'] / medians['coalesced']:.2f}\n")
    out.write(f"coalesced ÷ raw one-batch throughput: {medians['raw batch'] / medians['coalesced']:.2f}\n")
    out.write(f"bound on that ratio from the SDK's floor, raw ÷ (raw + floor): {sdk_bound(medians):.2f}\n")
    out.write(f"added beyond the engine and the SDK: {1000 * added_ms(medians):.1f} ms for 64 calls\n")
    out.write(f"batching counters: {batching}\n")


def sdk_bound(medians: dict[str, float]) -> float:
    """The best coalesced ÷ raw that any server on this SDK could reach: raw ÷ (raw + floor)."""
    return medians["raw batch"] / (medians["raw batch"] + medians["sdk floor"])


def added_ms(medians: dict[str, float]) -> float:
    """Seconds the coalesced burst took beyond the raw batch and the SDK's floor."""
    return medians["coalesced"] - medians["raw batch"] - medians["sdk floor"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.models_dir, args.repeats)
