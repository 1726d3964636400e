"""Exports that need optimum-intel and torch (the ``convert`` extra); imported only when used."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import CatalogueError

__all__ = ["CONVERT_INSTALL", "export_whisper"]

CONVERT_INSTALL = (
    "pip install -c scripts/torch-cpu-constraints.txt '.[convert]' && pip uninstall -y torchvision  "
    "(from a clone; the constraint keeps torch at its CPU build 2.13.0)"
)


def export_whisper(hf_folder: Path, output: Path, weight_format: str) -> None:
    """A Hugging Face Whisper checkpoint → the folder ``WhisperPipeline`` loads (fp32 or int8)."""
    modules = _convert_modules()
    options: dict[str, Any] = {}
    if weight_format == "int8":
        options["quantization_config"] = modules["OVWeightQuantizationConfig"](bits=8)
    model = modules["OVModelForSpeechSeq2Seq"].from_pretrained(
        str(hf_folder), export=True, compile=False, **options
    )
    model.save_pretrained(str(output))
    shutil.copy(hf_folder / "preprocessor_config.json", output / "preprocessor_config.json")
    shutil.copy(hf_folder / "generation_config.json", output / "generation_config.json")
    tokenizer = modules["AutoTokenizer"].from_pretrained(str(hf_folder))
    encoder, decoder = modules["convert_tokenizer"](tokenizer, with_detokenizer=True)
    modules["save_model"](encoder, str(output / "openvino_tokenizer.xml"))
    modules["save_model"](decoder, str(output / "openvino_detokenizer.xml"))


def _convert_modules() -> dict[str, Any]:
    try:
        from openvino import save_model
        from openvino_tokenizers import convert_tokenizer
        from optimum.intel import OVModelForSpeechSeq2Seq, OVWeightQuantizationConfig
        from transformers import AutoTokenizer
    except (ImportError, RuntimeError) as exc:
        raise CatalogueError(
            f"exporting this model needs the 'convert' extra (optimum-intel, torch): {exc}. Install it with: "
            f"{CONVERT_INSTALL}"
        ) from exc
    return {
        "save_model": save_model,
        "convert_tokenizer": convert_tokenizer,
        "OVModelForSpeechSeq2Seq": OVModelForSpeechSeq2Seq,
        "OVWeightQuantizationConfig": OVWeightQuantizationConfig,
        "AutoTokenizer": AutoTokenizer,
    }
