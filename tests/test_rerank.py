"""`rerank` on the MiniLM cosine reranker, and the plumbing for a real cross-encoder folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from .conftest import RERANKER, structured, text_of

pytestmark = pytest.mark.anyio

DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron tower in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Paris is the capital and most populous city of France.",
    "The stock market fell sharply on Monday.",
    "Mount Everest is the highest mountain above sea level.",
]
CASES = [
    ("What is the capital of France?", 2),
    ("How do plants make energy from sunlight?", 1),
    ("Which is the tallest mountain in the world?", 4),
]


async def _rerank(client: Client, **arguments: Any) -> list[dict[str, Any]]:
    result = structured(await client.call_tool("rerank", {"model": RERANKER, **arguments}))
    return list(result["results"])


@pytest.mark.parametrize(("query", "best"), CASES)
async def test_the_relevant_document_ranks_first(client: Client, query: str, best: int) -> None:
    results = await _rerank(client, query=query, documents=DOCUMENTS)
    assert results[0]["index"] == best


async def test_every_document_comes_back_once_with_its_index(client: Client) -> None:
    results = await _rerank(client, query=CASES[0][0], documents=DOCUMENTS)
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    assert all(r["document"] == DOCUMENTS[r["index"]] for r in results)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


async def test_top_n_is_honoured(client: Client) -> None:
    assert len(await _rerank(client, query=CASES[0][0], documents=DOCUMENTS, top_n=2)) == 2
    assert len(await _rerank(client, query=CASES[0][0], documents=DOCUMENTS, top_n=50)) == len(DOCUMENTS)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": "   ", "documents": ["a"]}, "'query' is empty"),
        ({"query": "q", "documents": ["a", ""]}, "documents[1] is empty"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ],
)
async def test_bad_rerank_input_is_refused(client: Client, arguments: dict[str, Any], expected: str) -> None:
    result = await client.call_tool("rerank", {"model": RERANKER, **arguments})
    assert result.is_error and expected in text_of(result)


async def test_the_cosine_reranker_says_what_it_is(client: Client) -> None:
    contents = (await client.read_resource("openarc://models")).contents
    models = {m["name"]: m for m in json.loads(getattr(contents[0], "text", ""))}
    assert "NOT a trained cross-encoder" in models[RERANKER]["description"]


async def test_rerank_on_an_embedding_model_is_a_type_error(client: Client, models_dir: Path) -> None:
    result = await client.call_tool("rerank", {"model": "all-minilm-l6-v2", "query": "q", "documents": ["a"]})
    expected = "is of type 'embedding'; this call needs a model of type 'reranker'"
    assert result.is_error and expected in text_of(result)


@pytest.mark.parametrize(
    ("max_length", "expected"),
    [
        (1024, "max_length 1024 is more than the model's 512 positions"),
        ("long", "must be a whole number of at least 1, got 'long'"),
        (0, "must be a whole number of at least 1, got 0"),
    ],
)
async def test_a_reranker_max_length_past_its_positions_or_not_a_length_is_refused(
    client: Client, models_dir: Path, max_length: object, expected: str
) -> None:
    """Past the position table a model computes garbage, silently: refused when loading."""
    arguments = {
        "model_name": "reranker-max-length",
        "model_path": str(models_dir / RERANKER),
        "model_type": "reranker",
        "runtime_config": {"max_length": max_length},
    }
    result = await client.call_tool("load_model", arguments)
    assert result.is_error and expected in text_of(result), text_of(result)
