"""Embedding throughput: 64 concurrent one-text `embed` calls, coalesced vs serialized.

Measured side by side in one run on the real all-MiniLM-L6-v2 (interleaved repetitions, medians),
against the raw ``TextEmbeddingPipeline`` embedding the same 64 texts in one batch, two ways:

- in process, through the SDK's in-memory client (client and server share one event loop, so the
  client's own work, its jsonschema check of every result included, is in the time);
- over stdio, as hosts run the server: `openarc-mcp serve` in its own process, driven by a lean
  JSON-RPC client that does no more than a host must (write the 64 request lines at once, read and
  parse the 64 answers). It parses with pydantic-core's JSON parser, as the SDK's own stdio client
  does (`--client-parser json` uses the standard library's ``json.loads`` instead: ~120 µs per
  8 KB answer of 384 floats here, against ~16 µs, which the ratios would then count as server time).

Beside each, floors of the SDK (over stdio on the SDK's own stdio transport): 64 concurrent calls
of a trivial tool on a minimal ``MCPServer`` (``minimal_server.py``), and 64 concurrent calls of an
embed tool with openarc-mcp's arguments and output schema that returns a fixed vector without
computing it (``embed_floor_server.py``: what the SDK and its client spend on 64 embed calls alone);
over stdio also that embed tool on openarc-mcp's own stdio transport, which is faster than the
SDK's (chunked reads and writes; tool calls served directly, through the SDK's tool objects).
The raw pipeline also embeds the 64 texts one call each, back to back: ``raw one by one ÷ raw
batch`` is the engine's own gain from batching, what coalesced ÷ serialized would be if a server
added nothing (work a server does per engine call raises it: serialized calls pay it 64 times, a
coalesced burst once; work per request lowers it).
``raw ÷ (raw + lower embed floor)`` is the most a server built on the SDK's tools could reach on
this machine; ``coalesced - raw - lower embed floor`` is what openarc-mcp adds beyond the engine and
that floor. Figures are ratios; absolute times depend on the machine.

    python benchmarks/embed_coalescing.py [--models-dir DIR] [--repeats 7] [--client-parser json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import embed_floor_server
import minimal_server
import pydantic_core
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.library import DEFAULT_EMBEDDING
from openarc_mcp.library.prepare import prepare_models
from openarc_mcp.schema import LoadRequest
from openarc_mcp.settings import Settings, default_models_dir
from openarc_mcp.transports.mcp_server import build_mcp_server

FLOOR_SERVER = Path(__file__).with_name("embed_floor_server.py")
PARSERS: dict[str, Callable[[bytes], Any]] = {"pydantic": pydantic_core.from_json, "json": json.loads}
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


async def main(models_dir: Path, repeats: int, client_parser: str) -> None:
    prepare_models([DEFAULT_EMBEDDING], models_dir)
    medians, batching = await _measure(models_dir, repeats)
    _report("in process (SDK in-memory client)", medians)
    sys.stdout.write(f"batching counters: {batching}\n\n")
    _report(
        "over stdio (lean JSON-RPC client)",
        await anyio.to_thread.run_sync(measure_stdio, models_dir, repeats, client_parser),
    )


async def measure(models_dir: Path, repeats: int) -> dict[str, float]:
    """Median seconds of the 64 texts: 'coalesced', 'serialized', 'raw batch' (one engine call),
    'raw one by one' (64 engine calls back to back), 'sdk floor' (64 concurrent trivial calls on a
    minimal server) and 'sdk embed floor' (64 embed calls answered with a fixed vector by a minimal
    server)."""
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
            Client(embed_floor_server.server) as embed_floor,
        ):
            await _trivial_calls(minimal)  # the first calls build the SDK's validators
            await _concurrent_calls(embed_floor)
            times: dict[str, list[float]] = {
                "coalesced": [],
                "serialized": [],
                "raw batch": [],
                "raw one by one": [],
                "sdk floor": [],
                "sdk embed floor": [],
            }
            for _ in range(repeats):  # interleaved, so drift on a shared machine hits all alike
                times["coalesced"].append(await _timed(lambda: _concurrent_calls(coalesced)))
                times["serialized"].append(await _timed(lambda: _concurrent_calls(serial)))
                times["raw batch"].append(
                    await _timed(lambda: anyio.to_thread.run_sync(raw.embed_documents, TEXTS))
                )
                times["raw one by one"].append(
                    await _timed(lambda: anyio.to_thread.run_sync(_one_by_one, raw.embed_documents))
                )
                times["sdk floor"].append(await _timed(lambda: _trivial_calls(minimal)))
                times["sdk embed floor"].append(await _timed(lambda: _concurrent_calls(embed_floor)))
        medians = {name: statistics.median(values) for name, values in times.items()}
        return medians, (await coalesced_app.model_details(DEFAULT_EMBEDDING)).batching


def _one_by_one(embed: Callable[[list[str]], object]) -> None:
    """The 64 texts through the raw pipeline one call each, back to back: the engine serialized."""
    for text in TEXTS:
        embed([text])


def _raw_pipeline(folder: Path) -> Any:
    import openvino_genai

    config = openvino_genai.TextEmbeddingPipeline.Config()
    config.pooling_type = openvino_genai.TextEmbeddingPipeline.PoolingType.MEAN
    config.normalize = True
    config.max_length = 256
    pipeline = openvino_genai.TextEmbeddingPipeline(str(folder), "CPU", config)
    pipeline.embed_documents(["warm-up"])
    return pipeline


def _report(title: str, medians: dict[str, float]) -> None:
    out = sys.stdout
    out.write(f"## {title}\n\n| measure | median s | texts/s |\n|---|---|---|\n")
    for name, seconds in medians.items():
        out.write(f"| {name} | {seconds:.3f} | {len(TEXTS) / seconds:.0f} |\n")
    out.write(f"\ncoalesced ÷ serialized throughput: {medians['serialized'] / medians['coalesced']:.2f}\n")
    out.write(
        "the engine's own gain from batching, raw one by one ÷ raw one batch (what coalesced ÷ "
        f"serialized would be if a server added nothing): {engine_batching_gain(medians):.2f}\n"
    )
    out.write(f"coalesced ÷ raw one-batch throughput: {medians['raw batch'] / medians['coalesced']:.2f}\n")
    out.write(
        "the most a server on this SDK could reach, raw ÷ (raw + lower embed floor): "
        f"{sdk_bound(medians):.2f}\n"
    )
    out.write(
        f"added beyond the engine and the lower embed floor: {1000 * added_ms(medians):.1f} ms for 64 calls\n"
    )


def engine_batching_gain(medians: dict[str, float]) -> float:
    """How much faster the raw pipeline embeds the 64 texts in one batch than one by one."""
    return medians["raw one by one"] / medians["raw batch"]


def sdk_bound(medians: dict[str, float]) -> float:
    """The best coalesced ÷ raw that any server on this SDK could reach: raw ÷ (raw + embed floor)."""
    return medians["raw batch"] / (medians["raw batch"] + embed_floor(medians))


def embed_floor(medians: dict[str, float]) -> float:
    """The lower embed floor measured: the SDK's, or the SDK's server on openarc-mcp's stdio wire."""
    return min(medians["sdk embed floor"], medians.get("embed floor, openarc wire", float("inf")))


def added_ms(medians: dict[str, float]) -> float:
    """Seconds the coalesced burst took beyond the raw batch and the SDK's embed floor."""
    return medians["coalesced"] - medians["raw batch"] - embed_floor(medians)


class LeanStdioClient:
    """JSON-RPC over a server's pipes, doing no more than a host must: write request lines, read and
    parse answer lines. Synchronous: run it on a thread."""

    def __init__(
        self, command: list[str], env: dict[str, str] | None = None, parser: str = "pydantic"
    ) -> None:
        self._parse = PARSERS[parser]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self._next_id = 0
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "lean", "version": "0"},
        }
        self._exchange([("initialize", hello)])
        self._send([{"jsonrpc": "2.0", "method": "notifications/initialized"}])

    def calls(self, tool: str, arguments: list[dict[str, Any]]) -> float:
        """Seconds from writing one call per arguments (all at once) to the last answer parsed."""
        started = time.perf_counter()
        for answer in self._exchange([("tools/call", {"name": tool, "arguments": a}) for a in arguments]):
            if "result" not in answer or answer["result"].get("isError"):
                raise RuntimeError(f"{tool} failed: {str(answer)[:300]}")
        return time.perf_counter() - started

    def _exchange(self, requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        first = self._next_id
        self._next_id += len(requests)
        self._send(
            [
                {"jsonrpc": "2.0", "id": first + index, "method": method, "params": params}
                for index, (method, params) in enumerate(requests)
            ]
        )
        answers: list[dict[str, Any]] = []
        while len(answers) < len(requests):
            message = self._parse(self._stdout.readline() or b"null")
            if message is None:
                raise RuntimeError("the server closed its stdout")
            if "id" in message and "method" not in message:
                answers.append(message)
        return answers

    def _send(self, messages: list[dict[str, Any]]) -> None:
        self._stdin.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
        self._stdin.flush()

    def close(self) -> None:
        self._stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def measure_stdio(models_dir: Path, repeats: int, client_parser: str = "pydantic") -> dict[str, float]:
    """Median seconds of the 64 texts over stdio: 'coalesced', 'serialized', 'raw batch' (one engine
    call, in this process), 'raw one by one' (64 engine calls back to back), 'sdk floor' (64 trivial
    calls on the minimal server over stdio), 'sdk embed floor' (64 embed calls answered with a fixed
    vector by a minimal server over the SDK's stdio) and 'embed floor, openarc wire' (the same server
    over openarc-mcp's stdio transport); ``client_parser``: how the lean client parses answers
    ('pydantic' as the SDK's client, or 'json')."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENARC_")}
    env |= {
        "OPENARC_MODELS_DIR": str(models_dir),
        "OPENARC_PRELOAD": DEFAULT_EMBEDDING,
        "OPENARC_LOG_LEVEL": "WARNING",
    }
    serve = [sys.executable, "-m", "openarc_mcp", "serve"]
    embeds = [{"model": DEFAULT_EMBEDDING, "texts": text} for text in TEXTS]
    echoes = [{"text": text} for text in TEXTS]
    minimal = [sys.executable, str(Path(__file__).with_name("minimal_server.py"))]
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "coalesced": (serve, env),
        "serialized": (serve, env | {"OPENARC_BATCH_MAX_ITEMS": "1"}),
        "sdk floor": (minimal, None),
        "sdk embed floor": ([sys.executable, str(FLOOR_SERVER)], None),
        "embed floor, openarc wire": ([sys.executable, str(FLOOR_SERVER), "--openarc-wire"], None),
    }
    clients = {
        name: LeanStdioClient(command, command_env, client_parser)
        for name, (command, command_env) in commands.items()
    }
    try:
        raw = _raw_pipeline(models_dir / DEFAULT_EMBEDDING)
        runs: dict[str, Callable[[], float]] = {
            "coalesced": lambda: clients["coalesced"].calls("embed", embeds),
            "serialized": lambda: clients["serialized"].calls("embed", embeds),
            "raw batch": lambda: _timed_sync(lambda: raw.embed_documents(TEXTS)),
            "raw one by one": lambda: _timed_sync(lambda: _one_by_one(raw.embed_documents)),
            "sdk floor": lambda: clients["sdk floor"].calls("echo", echoes),
            "sdk embed floor": lambda: clients["sdk embed floor"].calls("embed", embeds),
            "embed floor, openarc wire": lambda: clients["embed floor, openarc wire"].calls("embed", embeds),
        }
        for run in runs.values():  # waits for the preloads, warms up
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(run())
        return {name: statistics.median(values) for name, values in times.items()}
    finally:
        for client in clients.values():
            client.close()


def _timed_sync(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--client-parser", choices=sorted(PARSERS), default="pydantic", help="how the lean client parses"
    )
    args = parser.parse_args()
    anyio.run(main, args.models_dir, args.repeats, args.client_parser)
