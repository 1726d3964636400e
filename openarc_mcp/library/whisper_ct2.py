"""CTranslate2 Whisper weights (``model.bin``, spec v6) → a Hugging Face Whisper checkpoint.

numpy and json only. The CT2 file is: u32 version | str spec | u32 revision | u32 count, then per
variable ``str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | data``, then aliases
(``u32 count`` times ``str alias | str target``); ``str`` is a u16 length (NUL included) and bytes.
CT2 fuses self-attention q/k/v into one projection and cross-attention k/v into another; Whisper's
k projections have no bias; ``proj_out`` is tied to the token embedding.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CatalogueError
from .bert import write_safetensors

__all__ = ["convert_ct2_whisper", "read_ct2"]

_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BF16 = 5
Tensors = dict[str, np.ndarray]


def read_ct2(data: bytes) -> tuple[str, Tensors]:
    """The spec name and the variables (aliases resolved) of a CT2 ``model.bin``."""
    reader = _Reader(memoryview(data))
    version = reader.u32()
    if not 4 <= version <= 6:
        raise CatalogueError(f"unsupported CTranslate2 model.bin version {version}")
    spec = reader.text()
    reader.u32()  # spec revision
    variables = dict(reader.variable() for _ in range(reader.u32()))
    for _ in range(reader.u32()):
        alias, target = reader.text(), reader.text()
        variables[alias] = variables[target]
    return spec, variables


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self._data, self._at = data, 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self._data, self._at)
        self._at += struct.calcsize(fmt)
        return values

    def u32(self) -> int:
        return int(self.unpack("<I")[0])

    def text(self) -> str:
        (length,) = self.unpack("<H")
        raw = bytes(self._data[self._at : self._at + length - 1])
        self._at += length
        return raw.decode("utf-8")

    def variable(self) -> tuple[str, np.ndarray]:
        name = self.text()
        (rank,) = self.unpack("<B")
        dims = self.unpack(f"<{rank}I")
        dtype, size = self.unpack("<BI")
        raw = self._data[self._at : self._at + size]
        self._at += size
        if dtype == _BF16:
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, _DTYPES[dtype])
        return name, array.reshape(dims)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


class _WeightMap:
    """Renames CT2 variables to ``WhisperForConditionalGeneration`` tensors."""

    def __init__(self, variables: Tensors) -> None:
        self.v = variables
        self.out: Tensors = {}
        self.width = variables["encoder/conv1/weight"].shape[0]

    def linear(self, source: str) -> tuple[np.ndarray, np.ndarray | None]:
        weight = self.v[source + "/weight"]
        if weight.dtype in (np.int8, np.int16):
            weight = weight.astype(np.float32) / self.v[source + "/weight_scale"].astype(np.float32).reshape(
                -1, 1
            )
        bias = self.v.get(source + "/bias")
        return _f32(weight), None if bias is None else _f32(bias)

    def put_linear(self, target: str, source: str) -> None:
        weight, bias = self.linear(source)
        self.out[target + ".weight"] = weight
        if bias is not None:
            self.out[target + ".bias"] = bias

    def put_norm(self, target: str, source: str) -> None:
        self.out[target + ".weight"] = _f32(self.v[source + "/gamma"])
        self.out[target + ".bias"] = _f32(self.v[source + "/beta"])

    def self_attention(self, target: str, source: str) -> None:
        weight, bias = self.linear(source + "/linear_0")
        assert bias is not None
        d = self.width
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            self.out[f"{target}.{name}.weight"] = weight[index * d : (index + 1) * d]
            if name != "k_proj":  # Whisper's key projection has no bias (CT2 stores zeros)
                self.out[f"{target}.{name}.bias"] = bias[index * d : (index + 1) * d]
        self.put_linear(target + ".out_proj", source + "/linear_1")

    def cross_attention(self, target: str, source: str) -> None:
        self.put_linear(target + ".q_proj", source + "/linear_0")
        weight, bias = self.linear(source + "/linear_1")
        assert bias is not None
        self.out[target + ".k_proj.weight"] = weight[: self.width]
        self.out[target + ".v_proj.weight"] = weight[self.width :]
        self.out[target + ".v_proj.bias"] = bias[self.width :]
        self.put_linear(target + ".out_proj", source + "/linear_2")

    def feed_forward(self, target: str, source: str) -> None:
        self.put_norm(target + ".final_layer_norm", source + "/layer_norm")
        self.put_linear(target + ".fc1", source + "/linear_0")
        self.put_linear(target + ".fc2", source + "/linear_1")

    def layers(self, side: str) -> int:
        return len({m.group(1) for key in self.v if (m := re.match(rf"{side}/layer_(\d+)/", key))})

    def convert(self) -> Tensors:
        for conv in ("conv1", "conv2"):
            self.out[f"model.encoder.{conv}.weight"] = _f32(self.v[f"encoder/{conv}/weight"])
            self.out[f"model.encoder.{conv}.bias"] = _f32(self.v[f"encoder/{conv}/bias"])
        self.out["model.encoder.embed_positions.weight"] = _f32(
            self.v["encoder/position_encodings/encodings"]
        )
        self._stack("encoder", self._encoder_layer)
        self.out["model.decoder.embed_tokens.weight"] = _f32(self.v["decoder/embeddings/weight"])
        self.out["model.decoder.embed_positions.weight"] = _f32(
            self.v["decoder/position_encodings/encodings"]
        )
        self._stack("decoder", self._decoder_layer)
        return self.out

    def _stack(self, side: str, layer: Callable[[str, str], None]) -> None:
        for index in range(self.layers(side)):
            layer(f"{side}/layer_{index}", f"model.{side}.layers.{index}")
        self.put_norm(f"model.{side}.layer_norm", f"{side}/layer_norm")

    def _encoder_layer(self, source: str, target: str) -> None:
        self.put_norm(target + ".self_attn_layer_norm", source + "/self_attention/layer_norm")
        self.self_attention(target + ".self_attn", source + "/self_attention")
        self.feed_forward(target, source + "/ffn")

    def _decoder_layer(self, source: str, target: str) -> None:
        self._encoder_layer(source, target)
        self.put_norm(target + ".encoder_attn_layer_norm", source + "/attention/layer_norm")
        self.cross_attention(target + ".encoder_attn", source + "/attention")

    def dimensions(self) -> dict[str, int]:
        v = self.v
        return {
            "d_model": self.width,
            "encoder_layers": self.layers("encoder"),
            "decoder_layers": self.layers("decoder"),
            "encoder_attention_heads": int(v["encoder/num_heads"]),
            "decoder_attention_heads": int(v["decoder/num_heads"]),
            "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
            "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
            "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
            "vocab_size": int(v["decoder/embeddings/weight"].shape[0]),
        }


def convert_ct2_whisper(model_bin: bytes, ct2_config: Path, tokenizer_json: Path, output: Path) -> None:
    """Write a Hugging Face Whisper checkpoint (safetensors, configs, tokenizer) into ``output``."""
    spec, variables = read_ct2(model_bin)
    if spec != "WhisperSpec":
        raise CatalogueError(f"the CTranslate2 model is a {spec}, not Whisper")
    mapping = _WeightMap(variables)
    output.mkdir(parents=True, exist_ok=True)
    write_safetensors(output / "model.safetensors", mapping.convert())
    dims = mapping.dimensions()
    tokenizer = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    ids = {token["content"]: int(token["id"]) for token in tokenizer["added_tokens"]}
    _add_timestamp_tokens(tokenizer, ids["<|notimestamps|>"], dims["vocab_size"])
    ct2 = json.loads(ct2_config.read_text(encoding="utf-8"))
    _dump(output / "config.json", _model_config(dims, ids, ct2))
    _dump(output / "generation_config.json", _generation_config(dims, ids, ct2))
    _write_tokenizer(output, tokenizer, ids["<|endoftext|>"])
    _dump(output / "preprocessor_config.json", _preprocessor_config(dims["num_mel_bins"]))


def _add_timestamp_tokens(tokenizer: dict[str, Any], no_timestamps: int, vocab_size: int) -> None:
    """``<|0.00|>`` … ``<|30.00|>`` fill the vocabulary after no-timestamps; CT2's file omits them."""
    present = {token["id"] for token in tokenizer["added_tokens"]}
    for step in range(vocab_size - no_timestamps - 1):
        token_id = no_timestamps + 1 + step
        if token_id not in present:
            tokenizer["added_tokens"].append(
                {"id": token_id, "content": f"<|{step * 0.02:.2f}|>", "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": False}
            )  # fmt: skip


def _special_ids(dims: dict[str, int], ids: dict[str, int], ct2: dict[str, Any]) -> dict[str, Any]:
    end = ids["<|endoftext|>"]
    return {
        "bos_token_id": end,
        "eos_token_id": end,
        "pad_token_id": end,
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "begin_suppress_tokens": ct2.get("suppress_ids_begin", [220, end]),
        "suppress_tokens": ct2.get("suppress_ids", []),
        "max_length": dims["max_target_positions"],
    }


def _model_config(dims: dict[str, int], ids: dict[str, int], ct2: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        **dict.fromkeys(("activation_dropout", "attention_dropout", "dropout"), 0.0),
        **dict.fromkeys(("encoder_layerdrop", "decoder_layerdrop"), 0.0),
        "init_std": 0.02,
        **dims,
        "num_hidden_layers": dims["encoder_layers"],
        "is_encoder_decoder": True,
        "scale_embedding": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        **_special_ids(dims, ids, ct2),
        "use_weighted_layer_sum": False,
        "classifier_proj_size": 256,
        "apply_spec_augment": False,
        "median_filter_width": 7,
        "torch_dtype": "float32",
    }


def _generation_config(dims: dict[str, int], ids: dict[str, int], ct2: dict[str, Any]) -> dict[str, Any]:
    no_timestamps, start, translate = (
        ids["<|notimestamps|>"],
        ids["<|startoftranscript|>"],
        ids["<|translate|>"],
    )
    multilingual = dims["vocab_size"] >= 51865
    config: dict[str, Any] = {
        **_special_ids(dims, ids, ct2),
        "alignment_heads": ct2.get("alignment_heads", []),
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "no_timestamps_token_id": no_timestamps,
        "begin_timestamps_token_id": no_timestamps + 1,
        "prev_sot_token_id": ids["<|startofprev|>"],
        "return_timestamps": False,
    }
    if multilingual:
        config["lang_to_id"] = {code: i for code, i in ids.items() if start < i < translate}
        config["task_to_id"] = {"transcribe": ids["<|transcribe|>"], "translate": translate}
    return config


def _write_tokenizer(output: Path, tokenizer: dict[str, Any], end: int) -> None:
    _dump(output / "tokenizer.json", tokenizer)
    _dump(output / "vocab.json", tokenizer["model"]["vocab"])
    merges = [
        "#version: 0.2",
        *(m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]),
    ]
    (output / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    added = sorted(tokenizer["added_tokens"], key=lambda token: token["id"])
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    _dump(
        output / "tokenizer_config.json",
        {
            "tokenizer_class": "WhisperTokenizer",
            "add_prefix_space": False,
            **{f"{kind}_token": "<|endoftext|>" for kind in ("bos", "eos", "pad", "unk")},
            "clean_up_tokenization_spaces": True,
            "errors": "replace",
            "model_max_length": 1024,
            "processor_class": "WhisperProcessor",
            "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in keys} for t in added},
            "additional_special_tokens": [t["content"] for t in added if t["special"] and t["id"] > end],
        },
    )
    _dump(
        output / "special_tokens_map.json",
        {f"{kind}_token": "<|endoftext|>" for kind in ("bos", "eos", "pad", "unk")},
    )


def _preprocessor_config(mel_bins: int) -> dict[str, Any]:
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "WhisperProcessor",
        "feature_size": mel_bins,
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 30,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
