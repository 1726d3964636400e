"""How cost grows with work, through the real stdio server, beside the raw pipelines in one run.

Three reports (no targets; each row pairs the server with the raw pipeline measured next to it):

  prompt length   time to first token and decode tok/s for prompts of 128…2048 tokens
  concurrency     aggregate and per-request decode tok/s with 1, 2, 4, 8 concurrent generate calls
  embed batch     texts/s of one `embed` call with 1…256 texts ÷ raw TextEmbeddingPipeline

    python benchmarks/scaling.py [--repeats 3] [--only length,concurrency,embed] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from openarc_mcp.library import DEFAULT_EMBEDDING, DEFAULT_LLM
from openarc_mcp.library.prepare import prepare_models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import models_dir_from
from suite import connected, openarc_server

DECODE_TOKENS = 64
PROMPT_LENGTHS = (128, 256, 512, 1024, 2048)
CONCURRENCY = (1, 2, 4, 8)
EMBED_BATCHES = (1, 8, 32, 64, 128, 256)
FILLER = (
    "The lighthouse keeper climbed the stairs each evening, trimmed the wick, polished the lens and "
    "wrote the weather into the log while ships passed far out at sea. "
)

Report = list[dict[str, Any]]


# ----- prompt length ----------------------------------------------------------------------------


def _prompt_of(tokenizer: Any, tokens: int) -> str:
    """A prompt whose chat-templated form has about ``tokens`` tokens."""
    text = FILLER * (tokens // 20 + 2)
    words = text.split()
    low, high = 1, len(words)
    while low < high:  # the longest prefix of words that fits
        middle = (low + high + 1) // 2
        candidate = " ".join(words[:middle]) + "\nSummarise the text above."
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": candidate}], add_generation_prompt=True
        )
        if int(tokenizer.encode(chat, add_special_tokens=False).input_ids.shape[1]) <= tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]) + "\nSummarise the text above."


def _raw_run(pipe: Any, prompt: str) -> tuple[float, float]:
    """(TTFT seconds, decode tok/s) of the raw ``LLMPipeline``, streamed, greedy, ``DECODE_TOKENS``."""
    import openvino_genai

    config = pipe.get_generation_config()
    config.max_new_tokens, config.min_new_tokens, config.do_sample = DECODE_TOKENS, DECODE_TOKENS, False
    times: list[float] = []

    def on_text(_: str) -> bool:
        times.append(time.perf_counter())
        return False

    started = time.perf_counter()
    result = pipe.generate(openvino_genai.ChatHistory([{"role": "user", "content": prompt}]), config, on_text)
    ended = time.perf_counter()
    tokens = int(result.perf_metrics.get_num_generated_tokens())
    first = times[0] if times else ended
    return first - started, (tokens - 1) / (ended - first) if ended > first else 0.0


async def _served_run(client: Client, prompt: str) -> tuple[float, float]:
    """(TTFT seconds, decode tok/s) through the server: first progress text, then the rest."""
    first: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and not first and not message.startswith("loading"):
            first.append(time.perf_counter())

    arguments = {"model": DEFAULT_LLM, "prompt": prompt, "max_tokens": DECODE_TOKENS, "temperature": 0}
    started = time.perf_counter()
    result = await client.call_tool("generate", arguments, progress_callback=on_progress)
    ended = time.perf_counter()
    tokens = int((result.structured_content or {})["usage"]["completion_tokens"])
    ttft = (first[0] if first else ended) - started
    return ttft, (tokens - 1) / (ended - started - ttft) if tokens > 1 else 0.0


async def prompt_length(models_dir: Path, repeats: int) -> Report:
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(models_dir / DEFAULT_LLM), "CPU")
    tokenizer = pipe.get_tokenizer()
    rows: Report = []
    async with connected(openarc_server(models_dir, OPENARC_PRELOAD=DEFAULT_LLM)) as client:
        await _served_run(client, "Hello")
        for length in PROMPT_LENGTHS:
            prompt = _prompt_of(tokenizer, length)
            raw: list[tuple[float, float]] = []
            served: list[tuple[float, float]] = []
            for _ in range(repeats):
                raw.append(await anyio.to_thread.run_sync(_raw_run, pipe, prompt))
                served.append(await _served_run(client, prompt))
            row = {
                "prompt_tokens": length,
                "raw_ttft_ms": statistics.median(r[0] for r in raw) * 1000,
                "served_ttft_ms": statistics.median(s[0] for s in served) * 1000,
                "raw_decode_tok_s": statistics.median(r[1] for r in raw),
                "served_decode_tok_s": statistics.median(s[1] for s in served),
            }
            rows.append(row)
            sys.stderr.write(f"  {row}\n")
    return rows


# ----- concurrency ------------------------------------------------------------------------------


async def concurrency(models_dir: Path, repeats: int) -> Report:
    rows: Report = []
    async with connected(openarc_server(models_dir, OPENARC_PRELOAD=DEFAULT_LLM)) as client:
        await _served_run(client, "Hello")
        samples: dict[int, list[tuple[float, float]]] = {callers: [] for callers in CONCURRENCY}
        for _ in range(repeats):
            for callers in CONCURRENCY:
                samples[callers].append(await _concurrent(client, callers))
        for callers in CONCURRENCY:
            aggregate = statistics.median(s[0] for s in samples[callers])
            rows.append(
                {
                    "concurrent_calls": callers,
                    "aggregate_tok_s": aggregate,
                    "per_call_tok_s": statistics.median(s[1] for s in samples[callers]),
                    "aggregate_vs_one": aggregate / statistics.median(s[0] for s in samples[1]),
                }
            )
    return rows


async def _concurrent(client: Client, callers: int) -> tuple[float, float]:
    """(aggregate tok/s, median per-call tok/s) of ``callers`` generate calls started together."""
    counts: list[int] = []
    rates: list[float] = []

    async def one(index: int) -> None:
        arguments = {
            "model": DEFAULT_LLM,
            "prompt": f"Write a long story about a lighthouse keeper, chapter {index}.",
            "max_tokens": 96,
            "temperature": 0,
        }
        started = time.perf_counter()
        result = await client.call_tool("generate", arguments)
        tokens = int((result.structured_content or {})["usage"]["completion_tokens"])
        counts.append(tokens)
        rates.append(tokens / (time.perf_counter() - started))

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(callers):
            group.start_soon(one, index)
    return sum(counts) / (time.perf_counter() - started), statistics.median(rates)


# ----- embed batch size -------------------------------------------------------------------------


async def embed_batch(models_dir: Path, repeats: int) -> Report:
    from embed_coalescing import _raw_pipeline

    raw = _raw_pipeline(models_dir / DEFAULT_EMBEDDING)
    texts = [
        f"Sentence {i}: the keeper wrote the weather into the log, night {i}."
        for i in range(max(EMBED_BATCHES))
    ]
    rows: Report = []
    async with connected(openarc_server(models_dir, OPENARC_PRELOAD=DEFAULT_EMBEDDING)) as client:
        await client.call_tool("embed", {"model": DEFAULT_EMBEDDING, "texts": "warm-up"})
        for size in EMBED_BATCHES:
            part = texts[:size]
            raw_s: list[float] = []
            served_s: list[float] = []
            for _ in range(repeats):
                raw_s.append(await anyio.to_thread.run_sync(_timed_raw_embed, raw, part))
                arguments = {"model": DEFAULT_EMBEDDING, "texts": part}
                served_s.append(await _timed(partial(client.call_tool, "embed", arguments)))
            raw_rate, served_rate = size / statistics.median(raw_s), size / statistics.median(served_s)
            rows.append(
                {
                    "texts": size,
                    "raw_texts_s": raw_rate,
                    "served_texts_s": served_rate,
                    "served_vs_raw": served_rate / raw_rate,
                }
            )
    return rows


def _timed_raw_embed(pipe: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    pipe.embed_documents(texts)
    return time.perf_counter() - started


async def _timed(run: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


# ----- output -----------------------------------------------------------------------------------

REPORTS: dict[str, Callable[[Path, int], Awaitable[Report]]] = {
    "length": prompt_length,
    "concurrency": concurrency,
    "embed": embed_batch,
}


def render(name: str, rows: Report) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) for key in keys) + " |")
    return "\n".join(lines) + "\n\n"


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


async def run(models_dir: Path, repeats: int, only: set[str]) -> dict[str, Report]:
    results: dict[str, Report] = {}
    for name, report in REPORTS.items():
        if not only or name in only:
            sys.stderr.write(f"measuring {name}...\n")
            results[name] = await report(models_dir, repeats)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated: length, concurrency, embed")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    models_dir = models_dir_from(args.models_dir)
    prepare_models([DEFAULT_LLM, DEFAULT_EMBEDDING], models_dir)
    only = {part.strip().lower() for part in args.only.split(",") if part.strip()}
    results = anyio.run(run, models_dir, args.repeats, only)
    for name, rows in results.items():
        sys.stdout.write(render(name, rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
