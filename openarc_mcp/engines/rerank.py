"""Reranking on ``openvino_genai.TextRerankPipeline``: cross-encoder folders (one logit per pair)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..schema import RuntimeValue
from .base import StopFlag
from .devices import require_device
from .options import checked_max_length, split_options
from .tokenizer_ir import TokenizerIR

__all__ = ["RERANK_OPTIONS", "RerankEngine", "RerankOutput"]

RERANK_OPTIONS = ("max_length",)
_ALL = 1 << 30  # GenAI cuts results to top_n, which defaults to 3: ask for every document


@dataclass(frozen=True)
class RerankOutput:
    """Document indices with their relevance in [0, 1], best first; all documents."""

    ranking: list[tuple[int, float]]


class RerankEngine:
    """One ``TextRerankPipeline``; scores every document against the query."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino_genai

        require_device(device)
        options, ov_properties = split_options(properties, RERANK_OPTIONS)
        config = openvino_genai.TextRerankPipeline.Config()
        config.top_n = _ALL
        if "max_length" in options:
            config.max_length = checked_max_length(options["max_length"], path)
        if not TokenizerIR(path).supports_pairs():  # not GenAI's Tokenizer: see tokenizer_ir.py
            raise ModelLoadError(
                "the model's tokenizer cannot encode (query, document) pairs, so GenAI would score "
                "query and document glued together; export the tokenizer with pair support"
            )
        self.max_length = config.max_length
        self._pipe: Any = openvino_genai.TextRerankPipeline(str(path), device, config, **ov_properties)
        self._pipe.rerank("warm-up", ["warm-up"])

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {
            "max_length": self.max_length or "the tokenizer's (longer pairs are cut, document first)",
            "scores": "sigmoid of the model's logit (0..1)",
        }

    def rerank(self, query: str, documents: list[str], stop: StopFlag) -> RerankOutput:
        """Every document's relevance to the query, best first.

        One (query, document) pair per engine call: GenAI 2026.4's pair tokenizer miscounts some
        batches of non-ASCII texts (a failed bounds check in CombineSegments), and the next call
        then corrupts the heap and aborts the process; single pairs held in 14,440 fuzzed cases.
        It costs ~3.5x the batched time on CPU (64 short documents: 0.29 s against 0.08 s).
        """
        scored: list[tuple[int, float]] = []
        for index, document in enumerate(documents):
            if stop.is_set():
                break
            [(_, score)] = self._pipe.rerank(query, [document])
            scored.append((index, float(score)))
        return RerankOutput(ranking=sorted(scored, key=lambda pair: -pair[1]))
