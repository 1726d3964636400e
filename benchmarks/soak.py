"""Soak: many mixed tool calls over a real stdio server process, then its shutdown, measured.

The server is spawned the way a desktop host spawns it (the SDK's stdio client), with SmolLM2,
MiniLM, the MiniLM reranker, Whisper tiny.en and Kokoro preloaded. ``--concurrency`` callers share
``--calls`` calls (embed, rerank, generate, transcribe, speak, in that order of frequency). Reported:
errors, the server's RSS after warm-up (the first 10 % of calls) and at the end (drift), latency
percentiles per tool for the first and the second half after warm-up, and how long the process
takes to end with its models loaded when stdin closes and when it gets SIGTERM.

    python benchmarks/soak.py [--calls 10000] [--concurrency 4] [--json FILE]

Exit status 1 when a target is missed: any error, RSS drift over 5 %, a shutdown over 2 s.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import soundfile
from mcp import Client, StdioServerParameters

from openarc_mcp.library import (
    DEFAULT_EMBEDDING,
    DEFAULT_LLM,
    DEFAULT_RERANKER,
    DEFAULT_TTS,
)
from openarc_mcp.library.prepare import prepare_models
from openarc_mcp.settings import default_models_dir

WHISPER = "whisper-tiny-en"
MODELS = [DEFAULT_LLM, DEFAULT_EMBEDDING, DEFAULT_RERANKER, WHISPER, DEFAULT_TTS]
MIX = ["embed"] * 8 + ["rerank"] * 5 + ["generate"] * 5 + ["transcribe", "speak"]  # of 20 calls
DRIFT_TARGET = 0.05
SHUTDOWN_TARGET_S = 2.0


def _audio_b64() -> str:
    buffer = io.BytesIO()
    tone = 0.1 * np.sin(np.linspace(0, 2 * np.pi * 440, 8000, dtype=np.float32))
    soundfile.write(buffer, tone, 16_000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def _arguments(tool: str, index: int, audio: str) -> dict[str, Any]:
    if tool == "embed":
        return {"model": DEFAULT_EMBEDDING, "texts": [f"soak text {index}", "a second text"]}
    if tool == "rerank":
        return {"model": DEFAULT_RERANKER, "query": f"query {index}", "documents": ["one", "two", "three"]}
    if tool == "generate":
        return {"model": DEFAULT_LLM, "prompt": f"Count from {index % 10}:", "max_tokens": 8}
    if tool == "transcribe":
        return {"model": WHISPER, "audio": audio}
    return {"model": DEFAULT_TTS, "text": f"Number {index % 100}."}


def _server(models_dir: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENARC_")}
    env |= {"OPENARC_MODELS_DIR": str(models_dir), "OPENARC_PRELOAD": ",".join(MODELS)}
    env["OPENARC_LOG_LEVEL"] = "WARNING"
    return StdioServerParameters(command=sys.executable, args=["-m", "openarc_mcp", "serve"], env=env)


def models_dir_from(given: Path | None) -> Path:
    """``--models-dir`` if given, else ``OPENARC_MODELS_DIR``, else the server's default folder."""
    configured = os.environ.get("OPENARC_MODELS_DIR")
    return given or (Path(configured) if configured else default_models_dir(os.environ))


def server_pid() -> int:
    """The openarc-mcp server among this process's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"openarc_mcp" in cmdline and b"serve" in cmdline:
            return int(entry.name)
    raise RuntimeError("the server process was not found")


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its descendants (a batching LLM runs in a child process)."""
    return sum(_own_rss_mb(member) for member in _process_tree(pid))


def _own_rss_mb(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0  # ended meanwhile
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a zombie has no resident memory


def _process_tree(pid: int) -> list[int]:
    members, index = [pid], 0
    while index < len(members):
        for task in Path(f"/proc/{members[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                members += [int(child) for child in task.read_text().split()]
        index += 1
    return members


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@contextmanager
def _gone_within(pid: int, label: str, result: dict[str, Any]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    while _alive(pid) and time.perf_counter() - started < 30:
        time.sleep(0.01)
    result[label] = round(time.perf_counter() - started, 3)


async def _wait_for_models(client: Client, audio: str) -> None:
    """One call of each tool: each waits for its model's start-up load, then warms it."""
    for tool in sorted(set(MIX)):
        answer = await client.call_tool(tool, _arguments(tool, 0, audio))
        if answer.is_error:
            raise RuntimeError(f"{tool} failed before the soak: {answer.content[0]}")


async def _soak(models_dir: Path, calls: int, concurrency: int) -> dict[str, Any]:
    audio = _audio_b64()
    latencies: dict[str, list[tuple[int, float]]] = defaultdict(list)
    errors: list[str] = []
    rss: list[tuple[int, float]] = []
    result: dict[str, Any] = {"calls": calls, "concurrency": concurrency}
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(_server(models_dir), mode="legacy"))
        pid = server_pid()
        await _wait_for_models(client, audio)
        rss.append((0, rss_mb(pid)))
        counter = iter(range(calls))

        async def caller() -> None:
            for index in counter:
                tool = MIX[index % len(MIX)]
                started = time.perf_counter()
                with anyio.fail_after(120):
                    answer = await client.call_tool(tool, _arguments(tool, index, audio))
                latencies[tool].append((index, time.perf_counter() - started))
                if answer.is_error:
                    errors.append(f"{tool}: {answer.content[0]}")
                if index % 100 == 99:
                    rss.append((index + 1, rss_mb(pid)))

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(caller)
        result["seconds"] = round(time.perf_counter() - started, 1)
        rss.append((calls, rss_mb(pid)))
        # The client closes the server's stdin, waits up to 2 s for it to exit, then terminates
        # it: under 2 s here means the server ended by itself.
        with _gone_within(pid, "stdin_close_exit_s", result):
            await stack.aclose()
    result |= _summary(calls, latencies, errors, rss)
    result["sigterm_exit_s"] = await _sigterm_exit(models_dir, audio)
    return result


async def _sigterm_exit(models_dir: Path, audio: str) -> float:
    figures: dict[str, Any] = {}
    async with Client(_server(models_dir), mode="legacy") as client:
        pid = server_pid()
        await _wait_for_models(client, audio)
        with _gone_within(pid, "sigterm", figures):
            os.kill(pid, signal.SIGTERM)
    return float(figures["sigterm"])


def _summary(
    calls: int,
    latencies: dict[str, list[tuple[int, float]]],
    errors: list[str],
    rss: list[tuple[int, float]],
) -> dict[str, Any]:
    warm = calls // 10
    baseline = next(mb for done, mb in rss if done >= warm)
    final = rss[-1][1]
    middle = warm + (calls - warm) // 2
    percentiles = {}
    for tool, samples in sorted(latencies.items()):
        first = [s for i, s in samples if warm <= i < middle]
        second = [s for i, s in samples if i >= middle]
        percentiles[tool] = {
            "p50_ms": [_ms(_quantile(first, 0.5)), _ms(_quantile(second, 0.5))],
            "p95_ms": [_ms(_quantile(first, 0.95)), _ms(_quantile(second, 0.95))],
        }
    return {
        "errors": len(errors),
        "first_errors": errors[:5],
        "rss_mb_after_warmup": round(baseline, 1),
        "rss_mb_end": round(final, 1),
        "rss_drift": round((final - baseline) / baseline, 4),
        "rss_mb_samples": [round(mb) for _, mb in rss],
        "latency_first_half_vs_second_half": percentiles,
    }


def _quantile(samples: list[float], q: float) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _verdict(result: dict[str, Any]) -> list[str]:
    missed = []
    if result["errors"]:
        missed.append(f"{result['errors']} errors")
    if result["rss_drift"] > DRIFT_TARGET:
        missed.append(f"RSS drift {result['rss_drift']:.1%} > {DRIFT_TARGET:.0%}")
    for key in ("stdin_close_exit_s", "sigterm_exit_s"):
        if result[key] > SHUTDOWN_TARGET_S:
            missed.append(f"{key} {result[key]} > {SHUTDOWN_TARGET_S}")
    return missed


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    models_dir = models_dir_from(args.models_dir)
    prepare_models(MODELS, models_dir)
    result = anyio.run(_soak, models_dir, args.calls, args.concurrency)
    missed = _verdict(result)
    result["targets_missed"] = missed
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
