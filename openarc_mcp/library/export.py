"""Exports that need optimum-intel and torch (the ``convert`` extra); imported only when used.

One function turns a Hugging Face checkpoint folder of any served type into the folder its GenAI
pipeline loads: ``models convert`` calls it for your checkpoints, and the catalogue calls it for
the checkpoints it builds (Whisper from CTranslate2 weights, the tiny LLaVA).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import CatalogueError
from ..schema import ModelType

__all__ = [
    "CONVERT_INSTALL",
    "EXPORT_TASKS",
    "ExportOptions",
    "WeightFormat",
    "export_checkpoint",
    "require_convert_extra",
]

CONVERT_INSTALL = (
    "pip install -c scripts/torch-cpu-constraints.txt '.[convert]' && pip uninstall -y torchvision  "
    "(from a clone; the constraint keeps torch at its CPU build 2.13.0)"
)

WeightFormat = Literal["fp32", "fp16", "int8", "int4"]

EXPORT_TASKS: dict[ModelType, str] = {
    ModelType.LLM: "text-generation-with-past",
    ModelType.VLM: "image-text-to-text",
    ModelType.WHISPER: "automatic-speech-recognition-with-past",
    ModelType.EMBEDDING: "feature-extraction",
    ModelType.RERANKER: "text-classification",
}
"""optimum-intel's export task for each model type it can export (as optimum-cli names them)."""

_MODEL_CLASSES: dict[ModelType, str] = {
    ModelType.LLM: "OVModelForCausalLM",
    ModelType.VLM: "OVModelForVisualCausalLM",
    ModelType.WHISPER: "OVModelForSpeechSeq2Seq",
    ModelType.EMBEDDING: "OVModelForFeatureExtraction",
    ModelType.RERANKER: "OVModelForSequenceClassification",
}

_CONVERT_EXTRA_MODULES = ("optimum.intel", "torch", "transformers", "openvino_tokenizers")

# files the served folder needs beside the graphs, copied from the checkpoint when the export skips them
_SIDE_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    # sentence-transformers: how an embedding model pools, normalises and truncates
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


@dataclass(frozen=True)
class ExportOptions:
    """How to store the weights: fp32/fp16 as is, or int8/int4 weight compression (NNCF)."""

    weight_format: WeightFormat = "fp16"
    group_size: int | None = None
    sym: bool = False
    trust_remote_code: bool = False


def export_checkpoint(hf_folder: Path, output: Path, model_type: ModelType, options: ExportOptions) -> None:
    """A Hugging Face checkpoint → the folder GenAI loads: graphs, tokenizers, configs."""
    class_name = _MODEL_CLASSES.get(model_type)
    if class_name is None:
        raise CatalogueError(f"optimum-intel has no export for '{model_type}' models")
    modules = _convert_modules()
    weights = _weight_options(modules, options)
    with _quiet_tracing():
        model = getattr(modules["optimum.intel"], class_name).from_pretrained(
            str(hf_folder), export=True, compile=False, trust_remote_code=options.trust_remote_code, **weights
        )
        if options.weight_format == "fp16":
            model.half()
    model.save_pretrained(str(output))
    if model_type is ModelType.VLM:
        modules["AutoProcessor"].from_pretrained(
            str(hf_folder), trust_remote_code=options.trust_remote_code
        ).save_pretrained(str(output))
    _copy_side_files(hf_folder, output)
    _write_preprocessor_config(output)
    _convert_tokenizer(modules, hf_folder, output, options.trust_remote_code)


def check_weight_flags(weight_format: str, group_size: int | None, sym: bool) -> None:
    """Refuse quantization flags the weight format has no use for (before anything is exported)."""
    if group_size is not None and weight_format != "int4":
        raise CatalogueError(
            f"--group-size applies to int4 weights only, not {weight_format} (int8 is per channel)"
        )
    if sym and weight_format in ("fp32", "fp16"):
        raise CatalogueError(f"--sym applies to int8 and int4 weights only, not {weight_format}")


def _weight_options(modules: dict[str, Any], options: ExportOptions) -> dict[str, Any]:
    """from_pretrained's arguments for the weight format (never optimum's size-based default)."""
    check_weight_flags(options.weight_format, options.group_size, options.sym)
    if options.weight_format in ("fp32", "fp16"):
        return {"load_in_8bit": False}
    bits = 8 if options.weight_format == "int8" else 4
    settings: dict[str, Any] = {"bits": bits, "sym": options.sym}
    if bits == 4:
        settings["group_size"] = 128 if options.group_size is None else options.group_size
    return {"quantization_config": modules["optimum.intel"].OVWeightQuantizationConfig(**settings)}


def _copy_side_files(hf_folder: Path, output: Path) -> None:
    for name in _SIDE_FILES:
        source, target = hf_folder / name, output / name
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _write_preprocessor_config(folder: Path) -> None:
    """GenAI reads the image processor from preprocessor_config.json; transformers 5 nests it.

    Without the file GenAI silently assumes default image sizes and fails at the first image.
    """
    target = folder / "preprocessor_config.json"
    processor = folder / "processor_config.json"
    if target.exists() or not processor.exists():
        return
    nested = json.loads(processor.read_text(encoding="utf-8")).get("image_processor")
    if isinstance(nested, dict):
        target.write_text(json.dumps(nested, indent=2) + "\n", encoding="utf-8")


def _convert_tokenizer(
    modules: dict[str, Any], hf_folder: Path, output: Path, trust_remote_code: bool
) -> None:
    """openvino-tokenizers' tokenizer and detokenizer models (GenAI tokenises with these)."""
    try:
        tokenizer = modules["AutoTokenizer"].from_pretrained(
            str(hf_folder), trust_remote_code=trust_remote_code
        )
        encoder, decoder = modules["convert_tokenizer"](tokenizer, with_detokenizer=True)
    except Exception as exc:  # transformers and openvino-tokenizers raise many kinds
        raise CatalogueError(
            f"cannot convert the checkpoint's tokenizer with openvino-tokenizers: {exc}"
        ) from exc
    modules["save_model"](encoder, str(output / "openvino_tokenizer.xml"))
    modules["save_model"](decoder, str(output / "openvino_detokenizer.xml"))


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing a model warns about every Python branch it meets: noise no user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def require_convert_extra() -> None:
    """Refuse at once, before any work starts, when the 'convert' extra is not installed (looked up
    without importing it: the export itself runs in a child process)."""
    missing = [name for name in _CONVERT_EXTRA_MODULES if not _installed(name)]
    if missing:
        raise _missing_extra(f"no module named {', '.join(missing)}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing_extra(reason: object) -> CatalogueError:
    return CatalogueError(
        f"converting Hugging Face checkpoints needs the 'convert' extra (optimum-intel, torch): {reason}. "
        f"Install it with: {CONVERT_INSTALL}"
    )


def _convert_modules() -> dict[str, Any]:
    try:
        import optimum.intel
        from openvino import save_model
        from openvino_tokenizers import convert_tokenizer
        from transformers import AutoProcessor, AutoTokenizer
    except (ImportError, RuntimeError) as exc:
        raise _missing_extra(exc) from exc
    return {
        "save_model": save_model,
        "convert_tokenizer": convert_tokenizer,
        "optimum.intel": optimum.intel,
        "AutoProcessor": AutoProcessor,
        "AutoTokenizer": AutoTokenizer,
    }
