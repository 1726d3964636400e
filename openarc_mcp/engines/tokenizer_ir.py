"""A model folder's tokenizer IR, read and compiled with OpenVINO itself (not ``openvino_genai.Tokenizer``).

GenAI's standalone ``openvino_genai.Tokenizer`` kills the process (SIGSEGV in a native thread) when
it is constructed for a BERT-style tokenizer while an ``LLMPipeline`` generates in another thread:
openvino-genai 2026.4, reproduced within 40 s of looping, twice out of two. Compiling the same IR
with OpenVINO and openvino-tokenizers' ops did not crash in 1,100+ compilations under the same load,
nor did GenAI's own pipeline constructors in 150 s each. So the embedding and rerank engines, which
load while other models serve, read their tokenizer here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["TokenizerIR"]

_FILE = "openvino_tokenizer.xml"


class TokenizerIR:
    """The folder's ``openvino_tokenizer.xml``: its metadata, and token counts of texts (on CPU)."""

    def __init__(self, folder: Path) -> None:
        import openvino
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)

        self._core: Any = openvino.Core()
        self._model: Any = self._core.read_model(str(folder / _FILE))
        self._compiled: Any = None  # compiled on first use: metadata alone needs no compilation

    def metadata(self, key: str) -> str | None:
        """A value of the IR's rt_info (written by openvino-tokenizers at conversion), as text."""
        if not self._model.has_rt_info(key):
            return None
        return str(self._model.get_rt_info(key).astype(str))

    def supports_pairs(self) -> bool:
        """Whether the tokenizer knows how to encode (query, document) pairs, as GenAI's reranker needs:
        a second input, or a post-processor template with a ``pair`` form to build one from."""
        if self.metadata("number_of_inputs") == "2":
            return True
        try:
            template = json.loads(self.metadata("processed_post_processor_template") or "{}")
        except ValueError:
            return False
        return isinstance(template, dict) and "pair" in template

    def token_counts(self, texts: list[str], max_length: int) -> list[int]:
        """Tokens each text becomes, special tokens included, cut at ``max_length`` as the pipelines cut."""
        import numpy as np

        if self._compiled is None:
            self._compiled = self._core.compile_model(self._model, "CPU")
        outputs = self._compiled([np.array(texts)])
        mask = next(value for port, value in outputs.items() if port.get_any_name() == "attention_mask")
        return [min(int(count), max_length) for count in mask.sum(axis=1)]

    def close(self) -> None:
        """Drop the compiled tokenizer."""
        self._compiled = None
        self._model = None
