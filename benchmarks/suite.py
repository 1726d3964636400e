"""The performance suite: each figure a ratio of two things measured side by side in one run.

Interleaved repetitions, medians; real catalogue models; the server is a real subprocess spoken to
the way hosts speak to it (the SDK's stdio client, or HTTP). Prints the table with each target met
or not. Rows (issue 7):

  P1  generate tok/s through the stdio server ÷ raw LLMPipeline (same greedy tokens; the median of
      paired ratios, 3 pairs per repeat); TTFT added (the median of paired differences, 8 pairs of
      short generations per repeat)
  P2  aggregate tok/s of 4 concurrent generate calls ÷ 1 call alone
  P3  64 concurrent one-text embed calls: coalesced ÷ serialized; coalesced ÷ raw one batch (in
      process through the SDK's in-memory client, and over stdio with a lean JSON-RPC client; 5
      bursts of each per repeat, interleaved)
  P4  p50 of a trivial call (ping) through openarc-mcp ÷ a minimal server on the same SDK
  P5  spawn → initialize answered, 2 models configured to preload ÷ the minimal server (8 starts
      of each per repeat, alternating, a pause before each; the package's bytecode compiled first,
      as an install compiles it)
  P6  HTTP /v1/chat/completions tok/s ÷ raw pipeline (paired as P1's); 4 concurrent streams ÷ 1
      stream
  P7  RSS growth of the server after 10 load/unload cycles of each model type (all six)

    python benchmarks/suite.py [--repeats 5] [--only P1,P4] [--json FILE]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from openarc_mcp.library import (
    DEFAULT_EMBEDDING,
    DEFAULT_LLM,
    DEFAULT_RERANKER,
    DEFAULT_TTS,
    DEFAULT_VLM,
)
from openarc_mcp.library.prepare import prepare_models

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from soak import models_dir_from  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper and a storm."
TOKENS = 96
TTFT_TOKENS = 8
"""New tokens of the generations that measure the time to the first text."""
TTFT_PAIRS_PER_REPEAT = 8
"""Pairs of them per repeat of the suite (40 at the default 5 repeats)."""
RATE_PAIRS_PER_REPEAT = 5
"""Pairs of generations (through the server, raw) per repeat for P1's and P6's ÷ raw, which goes
first alternating; the row is the median of the pairs' ratios (a generation's tokens/s here moves
by ±10% from one minute to the next, which a pair's two sides share)."""
P3_BURSTS_PER_REPEAT = 5
"""Bursts of each P3 measure per repeat, interleaved (a burst takes 0.1-0.4 s; the time Python adds
to the engine's varies by several milliseconds from one burst to the next here)."""
P5_STARTS_PER_REPEAT = 8
"""Starts of each server per repeat for P5, the order alternating (a start takes about a second; one
start of either server ranges over ±150 ms here, so a median of fewer than ~20 moves by ±0.05)."""
P5_SETTLE_S = 1.0
"""Pause before each P5 start: a server that just exited (models it was loading included) must not
share the machine with the next one's start."""
WHISPER = "whisper-tiny-en"
MODELS = (DEFAULT_LLM, DEFAULT_VLM, DEFAULT_EMBEDDING, DEFAULT_RERANKER, DEFAULT_TTS, WHISPER)
"""One model of each type: the suite prepares them all, and P7 cycles each."""


@dataclass
class Row:
    ident: str
    measure: str
    value: float
    target: str
    met: bool
    detail: str = ""


# ----- servers ------------------------------------------------------------------------------


def _env(models_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENARC_")}
    return env | {"OPENARC_MODELS_DIR": str(models_dir), "OPENARC_LOG_LEVEL": "WARNING", **extra}


def openarc_server(models_dir: Path, **extra: str) -> StdioServerParameters:
    args = ["-m", "openarc_mcp", "serve"]
    return StdioServerParameters(command=sys.executable, args=args, env=_env(models_dir, **extra))


def minimal_server() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(HERE / "minimal_server.py")])


@contextlib.asynccontextmanager
async def connected(params: StdioServerParameters) -> AsyncIterator[Client]:
    async with Client(params, mode="legacy") as client:
        yield client


async def _median_of(repeats: int, *runs: Callable[[], Awaitable[float]]) -> list[float]:
    """Each run ``repeats`` times, interleaved (drift on a shared machine hits all alike); medians."""
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for index, run in enumerate(runs):
            samples[index].append(await run())
    return [statistics.median(values) for values in samples]


# ----- P1, P2: generation through the stdio server ------------------------------------------


def _raw_llm(models_dir: Path) -> Any:
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(models_dir / DEFAULT_LLM), "CPU")
    pipe.generate(["Hello"], _greedy(pipe, 1))
    return pipe


def _greedy(pipe: Any, tokens: int) -> Any:
    """A greedy generation config of ``tokens`` new tokens for the raw pipeline."""
    config = pipe.get_generation_config()
    config.max_new_tokens = tokens
    config.do_sample = False
    return config


def _raw_generate(pipe: Any, config: Any) -> tuple[float, float, int]:
    """(seconds, seconds to first text, tokens) of one raw streamed generation, chat-templated."""
    import openvino_genai

    first: list[float] = []
    started = time.perf_counter()

    def on_text(_: str) -> bool:
        if not first:
            first.append(time.perf_counter())
        return False

    result = pipe.generate(openvino_genai.ChatHistory([{"role": "user", "content": PROMPT}]), config, on_text)
    seconds = time.perf_counter() - started
    tokens = len(result.perf_metrics.raw_metrics.m_new_token_times) or TOKENS
    return seconds, (first[0] if first else started) - started, tokens


async def _served_generate(
    client: Client, prompt: str = PROMPT, tokens: int = TOKENS
) -> tuple[float, float, int]:
    first: list[float] = []
    started = time.perf_counter()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and not first and not message.startswith("loading"):
            first.append(time.perf_counter())

    arguments = {"model": DEFAULT_LLM, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    result = await client.call_tool("generate", arguments, progress_callback=on_progress)
    seconds = time.perf_counter() - started
    usage = (result.structured_content or {}).get("usage", {})
    return seconds, (first[0] if first else started) - started, int(usage.get("completion_tokens", TOKENS))


async def _raw_rate(pipe: Any, config: Any) -> float:
    seconds, _, tokens = await anyio.to_thread.run_sync(_raw_generate, pipe, config)
    return tokens / seconds


async def _side_by_side(
    pairs: int, served: Callable[[], Awaitable[float]], raw: Callable[[], Awaitable[float]]
) -> list[tuple[float, float]]:
    """(served, raw) measures of ``pairs`` pairs taken side by side, which goes first alternating."""
    samples: list[tuple[float, float]] = []
    for index in range(pairs):
        if index % 2:
            on_server = await served()
            on_raw = await raw()
        else:
            on_raw = await raw()
            on_server = await served()
        samples.append((on_server, on_raw))
    return samples


def _rate_row(ident: str, measure: str, target: str, floor: float, pairs: list[tuple[float, float]]) -> Row:
    """A ÷ raw row: the median of the pairs' ratios, and each side's median tokens/s."""
    ratio = statistics.median(served / raw for served, raw in pairs)
    served_rate = statistics.median(served for served, _ in pairs)
    raw_rate = statistics.median(raw for _, raw in pairs)
    detail = f"median of {len(pairs)} paired ratios; {served_rate:.1f} vs {raw_rate:.1f} tok/s"
    return Row(ident, measure, ratio, target, ratio >= floor, detail)


async def p1_p2(models_dir: Path, repeats: int) -> list[Row]:
    pipe = _raw_llm(models_dir)
    config = _greedy(pipe, TOKENS)
    async with connected(openarc_server(models_dir, OPENARC_PRELOAD=DEFAULT_LLM)) as client:
        await _served_generate(client)  # waits for the preload; warms up
        alone: list[float] = []
        together: list[float] = []
        for _ in range(repeats):
            seconds, _, tokens = await _served_generate(client, f"{PROMPT} (0)")
            alone.append(tokens / seconds)
            together.append(await _concurrent_rate(client, 4))

        async def served_rate() -> float:
            seconds, _, tokens = await _served_generate(client)
            return tokens / seconds

        rates = await _side_by_side(
            RATE_PAIRS_PER_REPEAT * repeats, served_rate, lambda: _raw_rate(pipe, config)
        )
        ttft = await _ttft_pairs(client, pipe, TTFT_PAIRS_PER_REPEAT * repeats)
    p2 = statistics.median(together) / statistics.median(alone)
    return [
        _rate_row("P1", "generate tok/s: stdio server ÷ raw LLMPipeline", "≥ 0.97", 0.97, rates),
        _ttft_row(ttft),
        Row("P2", "aggregate tok/s: 4 concurrent ÷ 1 alone", p2, "≥ 2.0", p2 >= 2.0,
            f"{statistics.median(together):.1f} vs {statistics.median(alone):.1f} tok/s"),
    ]  # fmt: skip


async def _ttft_pairs(client: Client, pipe: Any, pairs: int) -> list[tuple[float, float]]:
    """(served, raw) seconds to the first text of short generations of the same prompt, side by
    side: the time to the first text needs no long generation, and many pairs measure a few
    milliseconds where the first text itself varies by tens."""
    config = _greedy(pipe, TTFT_TOKENS)

    async def served() -> float:
        return (await _served_generate(client, tokens=TTFT_TOKENS))[1]

    async def raw() -> float:
        return (await anyio.to_thread.run_sync(_raw_generate, pipe, config))[1]

    return await _side_by_side(pairs, served, raw)


def _ttft_row(pairs: list[tuple[float, float]]) -> Row:
    """The TTFT row: the median of the paired differences (served minus raw), with their spread."""
    added = sorted(1000 * (served - raw) for served, raw in pairs)
    median_added = statistics.median(added)
    quartiles = statistics.quantiles(added, n=4)
    served_ms = 1000 * statistics.median(served for served, _ in pairs)
    raw_ms = 1000 * statistics.median(raw for _, raw in pairs)
    detail = (
        f"median of {len(pairs)} paired differences (middle half {quartiles[0]:+.1f}..{quartiles[2]:+.1f}); "
        f"first text {served_ms:.1f} vs {raw_ms:.1f} ms"
    )
    return Row("P1", "TTFT added by the server (ms)", median_added, "≤ 5", median_added <= 5, detail)


async def _concurrent_rate(client: Client, callers: int) -> float:
    counts: list[int] = []
    started = time.perf_counter()

    async def one(index: int) -> None:
        _, _, tokens = await _served_generate(client, f"{PROMPT} ({index})")
        counts.append(tokens)

    async with anyio.create_task_group() as group:
        for index in range(callers):
            group.start_soon(one, index)
    return sum(counts) / (time.perf_counter() - started)


# ----- P3: embed coalescing (benchmarks/embed_coalescing.py) ---------------------------------


async def p3(models_dir: Path, repeats: int) -> list[Row]:
    sys.path.insert(0, str(HERE))
    import embed_coalescing

    bursts = P3_BURSTS_PER_REPEAT * repeats
    in_process = await embed_coalescing.measure(models_dir, bursts)
    over_stdio = await anyio.to_thread.run_sync(embed_coalescing.measure_stdio, models_dir, bursts)
    return _p3_rows("in process", in_process) + _p3_rows("over stdio", over_stdio)


def _p3_rows(where: str, medians: dict[str, float]) -> list[Row]:
    import embed_coalescing

    over_serial = medians["serialized"] / medians["coalesced"]
    over_raw = medians["raw batch"] / medians["coalesced"]
    ms = {name: f"{1000 * seconds:.0f}" for name, seconds in medians.items()}
    bound = (
        f"the SDK alone takes {1000 * embed_coalescing.embed_floor(medians):.0f} ms for 64 embed calls "
        f"answered with a fixed vector ({ms['sdk floor']} ms for 64 trivial calls), so no server on it "
        "can pass "
        f"{embed_coalescing.sdk_bound(medians):.2f} here; added beyond engine and SDK "
        f"{1000 * embed_coalescing.added_ms(medians):.0f} ms"
    )
    return [
        Row(
            "P3",
            f"64 one-text embeds {where}: coalesced ÷ serialized",
            over_serial,
            "≥ 3.0",
            over_serial >= 3.0,
            f"{ms['coalesced']} vs {ms['serialized']} ms; the raw pipeline embeds the 64 texts "
            f"{embed_coalescing.engine_batching_gain(medians):.2f}x as fast in one batch as one by one "
            f"({ms['raw batch']} vs {ms['raw one by one']} ms)",
        ),
        Row(
            "P3",
            f"64 one-text embeds {where}: coalesced ÷ raw one batch",
            over_raw,
            "≥ 0.8",
            over_raw >= 0.8,
            f"{ms['coalesced']} vs {ms['raw batch']} ms; {bound}",
        ),
    ]


# ----- P4, P5: protocol overhead and start-up against a minimal server -----------------------


async def _ping_p50(client: Client, calls: int = 200) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.send_ping()  # the protocol's trivial request (legacy mode)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def p4(models_dir: Path, repeats: int) -> list[Row]:
    async with connected(openarc_server(models_dir)) as ours, connected(minimal_server()) as floor:
        ours_p50, floor_p50 = await _median_of(repeats, lambda: _ping_p50(ours), lambda: _ping_p50(floor))
    ratio = ours_p50 / floor_p50
    detail = f"{ours_p50 * 1e3:.2f} vs {floor_p50 * 1e3:.2f} ms"
    return [
        Row("P4", "p50 of a trivial call: openarc-mcp ÷ minimal server", ratio, "≤ 1.2", ratio <= 1.2, detail)
    ]


async def _time_to_initialized(params: StdioServerParameters) -> float:
    started = time.perf_counter()
    async with connected(params):
        return time.perf_counter() - started


async def p5(models_dir: Path, repeats: int) -> list[Row]:
    ours = openarc_server(models_dir, OPENARC_PRELOAD=f"{DEFAULT_LLM},{DEFAULT_EMBEDDING}")
    starts: dict[str, list[float]] = {"ours": [], "minimal": []}
    for index in range(P5_STARTS_PER_REPEAT * repeats):
        order = ("ours", "minimal") if index % 2 == 0 else ("minimal", "ours")
        for name in order:
            await anyio.sleep(P5_SETTLE_S)  # the previous server's exit must not slow this start
            starts[name].append(await _time_to_initialized(ours if name == "ours" else minimal_server()))
    ours_s, floor_s = statistics.median(starts["ours"]), statistics.median(starts["minimal"])
    ratio = ours_s / floor_s
    detail = f"{ours_s:.2f} vs {floor_s:.2f} s, medians of {len(starts['ours'])} starts each"
    return [
        Row("P5", "spawn → initialize, preloading 2 models ÷ minimal", ratio, "≤ 1.1", ratio <= 1.1, detail)
    ]


# ----- P6: the HTTP API ------------------------------------------------------------------------


async def p6(models_dir: Path, repeats: int) -> list[Row]:
    import httpx

    sys.path.insert(0, str(HERE.parent))
    from tests.http_server import running_server

    pipe = _raw_llm(models_dir)
    config = _greedy(pipe, TOKENS)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "openarc-bench-http.log"
    with running_server(models_dir, log, "bench-key", [DEFAULT_LLM]) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=300) as http:

            async def chat(index: int) -> int:
                body = {
                    "model": DEFAULT_LLM,
                    "messages": [{"role": "user", "content": f"{PROMPT} ({index})" if index else PROMPT}],
                    "max_tokens": TOKENS,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                tokens = 0
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            usage = json.loads(line.removeprefix("data: ")).get("usage") or {}
                            tokens = int(usage.get("completion_tokens", tokens))
                return tokens or TOKENS

            async def timed(callers: int) -> float:
                counts: list[int] = []
                started = time.perf_counter()
                async with anyio.create_task_group() as group:
                    for index in range(callers):

                        async def one(index: int = index) -> None:
                            counts.append(await chat(index))

                        group.start_soon(one)
                return sum(counts) / (time.perf_counter() - started)

            await timed(1)
            rates = await _side_by_side(
                RATE_PAIRS_PER_REPEAT * repeats, lambda: timed(1), lambda: _raw_rate(pipe, config)
            )
            one_stream, four_streams = await _median_of(repeats, lambda: timed(1), lambda: timed(4))
    scaling = four_streams / one_stream
    return [
        _rate_row("P6", "HTTP chat tok/s ÷ raw pipeline", "≥ 0.95", 0.95, rates),
        Row("P6", "HTTP 4 concurrent streams ÷ 1 stream", scaling, "≥ 2.0", scaling >= 2.0,
            f"{four_streams:.1f} vs {one_stream:.1f} tok/s"),
    ]  # fmt: skip


# ----- P7: memory across load/unload cycles ----------------------------------------------------


async def p7(models_dir: Path, repeats: int, cycles: int = 10) -> list[Row]:
    sys.path.insert(0, str(HERE))
    from soak import rss_mb, server_pid

    names = MODELS
    async with connected(openarc_server(models_dir)) as client:
        pid = server_pid()

        async def cycle() -> None:
            for name in names:
                await client.call_tool("load_model", {"model_name": name})
                await client.call_tool("unload_model", {"model_name": name})

        await cycle()  # the first cycle loads libraries and code that stay: the baseline is after it
        baseline = rss_mb(pid)
        for _ in range(cycles):
            await cycle()
        growth = rss_mb(pid) - baseline
    detail = f"{baseline:.0f} → {baseline + growth:.0f} MB over {cycles} cycles of {len(names)} models"
    return [Row("P7", "RSS growth after 10 load/unload cycles (MB)", growth, "≤ 50", growth <= 50, detail)]


# ----- the table --------------------------------------------------------------------------------

SUITE: dict[str, Callable[[Path, int], Awaitable[list[Row]]]] = {
    "P1": p1_p2,
    "P3": p3,
    "P4": p4,
    "P5": p5,
    "P6": p6,
    "P7": p7,
}


def render(rows: list[Row]) -> str:
    lines = ["| id | measure | value | target | met | detail |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row.ident} | {row.measure} | {row.value:.2f} | {row.target} | "
            f"{'yes' if row.met else '**no**'} | {row.detail} |"
        )
    return "\n".join(lines) + "\n"


async def run(models_dir: Path, repeats: int, only: set[str]) -> list[Row]:
    rows: list[Row] = []
    for ident, measure in SUITE.items():
        if only and ident not in only and not (ident == "P1" and "P2" in only):
            continue
        sys.stderr.write(f"measuring {ident}...\n")
        rows += await measure(models_dir, repeats)
    return rows


def compile_bytecode() -> None:
    """Write openarc-mcp's bytecode, as ``pip install`` does (a no-op where it is current).

    The SDK the minimal server runs on was compiled when it was installed; an editable install run
    with ``PYTHONDONTWRITEBYTECODE`` set (as on this project's machines) compiles every module of
    openarc-mcp from source at each start instead, ~0.1 s that P5 would count as the server's.
    """
    import openarc_mcp

    compileall.compile_dir(Path(openarc_mcp.__file__).parent, quiet=1)


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated row ids, e.g. P1,P4")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    models_dir = models_dir_from(args.models_dir)
    prepare_models(list(MODELS), models_dir)
    compile_bytecode()
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    rows = anyio.run(run, models_dir, args.repeats, only)
    sys.stdout.write(render(rows))
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2) + "\n")
    return 0 if all(row.met for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
