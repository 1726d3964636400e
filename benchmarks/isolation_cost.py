"""What a process of its own costs a one-at-a-time engine: the same engine in the caller's process
and behind the pipe (``isolated.py``), measured side by side in one run (interleaved, medians).

Engines: SmolLM2 on ``LLMPipeline`` (``batching: false``: the GGUF/NPU path) and the catalogue's
tiny random LLaVA on ``VLMPipeline`` (a 40x50 image; its compute is next to nothing, so the pipe's
share shows at its largest). Per engine: the whole call, and for the LLM the time to its first
streamed text; the load too (once each: a spawned Python that imports OpenVINO).

    python benchmarks/isolation_cost.py [--models-dir DIR] [--repeats 21]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from openarc_mcp.engines.base import StopFlag
from openarc_mcp.engines.llm import IsolatedLLMEngine, LLMEngine
from openarc_mcp.engines.vlm import IsolatedVLMEngine, VLMEngine
from openarc_mcp.library import DEFAULT_LLM, DEFAULT_VLM
from openarc_mcp.library.prepare import prepare_models
from openarc_mcp.schema import ChatMessage, GenerationOptions
from openarc_mcp.settings import default_models_dir

QUESTION = [ChatMessage(role="user", content="What is the capital of France?")]
LLM_OPTIONS = GenerationOptions(max_tokens=16, temperature=0)
VLM_OPTIONS = GenerationOptions(max_tokens=8, temperature=0)
VLM_CHAT = [{"role": "user", "content": "What is in the picture?"}]
IMAGE = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)


def _timed(build: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    engine = build()
    return engine, time.perf_counter() - started


def _llm_call(engine: Any) -> tuple[float, float]:
    """Seconds to the first streamed text and to the answer."""
    started = time.perf_counter()
    first: list[float] = []

    def on_text(_piece: str) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    engine.generate(QUESTION, LLM_OPTIONS, on_text, StopFlag())
    return first[0], time.perf_counter() - started


def _vlm_call(engine: Any) -> float:
    started = time.perf_counter()
    engine.generate(VLM_CHAT, [IMAGE], VLM_OPTIONS, lambda _piece: None, StopFlag())
    return time.perf_counter() - started


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir(os.environ))
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    prepare_models([DEFAULT_LLM, DEFAULT_VLM], args.models_dir)
    llm_path, vlm_path = args.models_dir / DEFAULT_LLM, args.models_dir / DEFAULT_VLM
    llm_in, llm_in_load = _timed(lambda: LLMEngine(llm_path, "CPU", {}))
    llm_out, llm_out_load = _timed(lambda: IsolatedLLMEngine(llm_path, "CPU", {}))
    vlm_in, vlm_in_load = _timed(lambda: VLMEngine(vlm_path, "CPU", {}))
    vlm_out, vlm_out_load = _timed(lambda: IsolatedVLMEngine(vlm_path, "CPU", {}))
    times: dict[str, list[float]] = {key: [] for key in ("lf_in", "lf_out", "l_in", "l_out", "v_in", "v_out")}
    for _ in range(args.repeats):
        for suffix, llm, vlm in (("in", llm_in, vlm_in), ("out", llm_out, vlm_out)):
            first, whole = _llm_call(llm)
            times[f"lf_{suffix}"].append(first)
            times[f"l_{suffix}"].append(whole)
            times[f"v_{suffix}"].append(_vlm_call(vlm))
    for engine in (llm_in, llm_out, vlm_in, vlm_out):
        engine.close()
    rows = (
        ("LLM load", [llm_in_load], [llm_out_load]),
        ("LLM first text (16-token answer)", times["lf_in"], times["lf_out"]),
        ("LLM whole call", times["l_in"], times["l_out"]),
        ("VLM load", [vlm_in_load], [vlm_out_load]),
        ("VLM whole call (8 tokens, 40x50 image)", times["v_in"], times["v_out"]),
    )
    sys.stdout.write(f"{'':42} {'in process':>11} {'own process':>11}  difference\n")
    for label, inside, outside in rows:
        difference = (statistics.median(outside) - statistics.median(inside)) * 1000
        sys.stdout.write(f"{label:42} {_ms(inside)} {_ms(outside)}  {difference:+.2f} ms\n")


if __name__ == "__main__":
    main()
