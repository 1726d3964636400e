"""Torch-free OpenVINO graphs for BERT encoders (all-MiniLM-L6-v2), built from safetensors weights.

Two graphs come out of one encoder builder:

- an embedding model (``input_ids, attention_mask, token_type_ids → last_hidden_state``), the
  interface of GenAI's ``TextEmbeddingPipeline``;
- a "bi-encoder in a cross-encoder's clothes" for ``TextRerankPipeline``: it takes the pair
  encoding ``[CLS] query [SEP] document [SEP]``, splits it back into its two segments using
  ``token_type_ids``, encodes each separately with the same weights, and outputs
  ``logits = scale * (cosine - shift)``. It ranks by embedding similarity; it is not a trained
  cross-encoder, and its records say so.

Only ``numpy``, ``openvino`` and (for the tokenizer) ``transformers`` without torch are used.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BertConfig",
    "build_embedding_graph",
    "build_rerank_graph",
    "convert_tokenizer",
    "read_safetensors",
    "write_safetensors",
]

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}
_I64 = np.int64


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, as float32 numpy arrays (fp16 upcast)."""
    with path.open("rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header: dict[str, Any] = json.loads(file.read(header_size))
        data = file.read()
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        tensors[name.removeprefix("bert.")] = array.astype(np.float32) if dtype != _I64 else array
    return tensors


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write float32 tensors as a safetensors file (the format Hugging Face checkpoints use)."""
    header: dict[str, Any] = {}
    offset = 0
    names = sorted(tensors)
    for name in names:
        size = tensors[name].astype(np.float32, copy=False).nbytes
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name in names:
            file.write(np.ascontiguousarray(tensors[name], dtype=np.float32).tobytes())


@dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT encoder, from its Hugging Face ``config.json``."""

    layers: int
    heads: int
    hidden: int
    eps: float

    @classmethod
    def from_folder(cls, folder: Path) -> BertConfig:
        """Read ``config.json`` of a Hugging Face BERT checkpoint."""
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return cls(
            layers=int(config["num_hidden_layers"]),
            heads=int(config["num_attention_heads"]),
            hidden=int(config["hidden_size"]),
            eps=float(config.get("layer_norm_eps", 1e-12)),
        )


class _Encoder:
    """Builds BERT encoder subgraphs that share one set of weight constants."""

    def __init__(self, weights: dict[str, np.ndarray], config: BertConfig) -> None:
        import openvino.opset13 as ops

        self.op: Any = ops
        self._weights = weights
        self._constants: dict[str, Any] = {}
        self.config = config

    def const(self, value: Any, dtype: Any = np.float32) -> Any:
        """A small constant node."""
        return self.op.constant(np.asarray(value, dtype=dtype))

    def weight(self, name: str) -> Any:
        """A weight constant, created once per graph and shared by every encoder instance."""
        if name not in self._constants:
            self._constants[name] = self.op.constant(self._weights[name])
        return self._constants[name]

    def encode(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        """``last_hidden_state`` [B, T, H] for i64 inputs [B, T]."""
        x = self._embeddings(input_ids, token_type_ids)
        mask = self._additive_mask(attention_mask)
        for layer in range(self.config.layers):
            x = self._layer(x, mask, f"encoder.layer.{layer}.")
        return x

    def mean_pooled_unit(self, input_ids: Any, attention_mask: Any) -> Any:
        """Mean over real tokens, L2-normalised: [B, H] (sentence-transformers' MiniLM recipe)."""
        op = self.op
        hidden = self.encode(input_ids, attention_mask, op.multiply(input_ids, self.const(0, _I64)))
        weights = op.unsqueeze(op.convert(attention_mask, "f32"), self.const([2], _I64))
        total = op.reduce_sum(op.multiply(hidden, weights), self.const([1], _I64))
        count = op.maximum(op.reduce_sum(weights, self.const([1], _I64)), self.const(1e-9))
        return op.normalize_l2(op.divide(total, count), self.const([1], _I64), 1e-12, "max")

    def _embeddings(self, input_ids: Any, token_type_ids: Any) -> Any:
        op, zero = self.op, self.const(0, _I64)
        length = op.squeeze(
            op.gather(op.shape_of(input_ids), self.const([1], _I64), zero), self.const([0], _I64)
        )
        positions = op.unsqueeze(op.range(zero, length, self.const(1, _I64), "i64"), self.const([0], _I64))
        x = op.gather(self.weight("embeddings.word_embeddings.weight"), input_ids, zero)
        x = op.add(x, op.gather(self.weight("embeddings.position_embeddings.weight"), positions, zero))
        x = op.add(x, op.gather(self.weight("embeddings.token_type_embeddings.weight"), token_type_ids, zero))
        return self._norm(x, "embeddings.LayerNorm.")

    def _additive_mask(self, attention_mask: Any) -> Any:
        op = self.op
        blocked = op.subtract(self.const(1.0), op.convert(attention_mask, "f32"))
        # finite (not -inf), so a row with no real token gives zeros rather than NaN
        return op.unsqueeze(op.multiply(blocked, self.const(-1.7e38)), self.const([1, 2], _I64))

    def _layer(self, x: Any, mask: Any, prefix: str) -> Any:
        op, cfg = self.op, self.config
        head_size = cfg.hidden // cfg.heads
        split = self.const([0, 0, cfg.heads, head_size], _I64)
        to_heads = self.const([0, 2, 1, 3], _I64)

        def heads(name: str) -> Any:
            projected = self.linear(x, prefix + f"attention.self.{name}")
            return op.transpose(op.reshape(projected, split, True), to_heads)

        scale = self.const(1.0 / np.sqrt(head_size))
        attended = op.scaled_dot_product_attention(
            heads("query"), heads("key"), heads("value"), mask, scale, causal=False
        )
        merged = op.reshape(op.transpose(attended, to_heads), self.const([0, 0, cfg.hidden], _I64), True)
        x = self._norm(
            op.add(x, self.linear(merged, prefix + "attention.output.dense")),
            prefix + "attention.output.LayerNorm.",
        )
        inner = op.gelu(self.linear(x, prefix + "intermediate.dense"), "erf")
        return self._norm(
            op.add(x, self.linear(inner, prefix + "output.dense")), prefix + "output.LayerNorm."
        )

    def linear(self, x: Any, prefix: str) -> Any:
        """``x @ W.T + b`` with the weights ``{prefix}.weight`` and ``{prefix}.bias``."""
        op = self.op
        return op.add(
            op.matmul(x, self.weight(prefix + ".weight"), False, True), self.weight(prefix + ".bias")
        )

    def _norm(self, x: Any, prefix: str) -> Any:
        op = self.op
        normed = op.mvn(x, self.const([-1], _I64), True, self.config.eps, "inside_sqrt")
        return op.add(op.multiply(normed, self.weight(prefix + "weight")), self.weight(prefix + "bias"))


def _inputs() -> list[Any]:
    import openvino

    params = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        param = openvino.opset13.parameter(openvino.PartialShape([-1, -1]), openvino.Type.i64, name=name)
        param.output(0).get_tensor().set_names({name})
        params.append(param)
    return params


def build_embedding_graph(weights: dict[str, np.ndarray], config: BertConfig) -> Any:
    """An ``openvino.Model`` whose output ``last_hidden_state`` GenAI pools into embeddings."""
    import openvino

    encoder = _Encoder(weights, config)
    input_ids, attention_mask, token_type_ids = _inputs()
    hidden = encoder.encode(input_ids, attention_mask, token_type_ids)
    hidden.output(0).get_tensor().set_names({"last_hidden_state"})
    return openvino.Model([hidden.output(0)], [input_ids, attention_mask, token_type_ids], "bert_encoder")


def build_classifier_graph(
    weights: dict[str, np.ndarray], config: BertConfig, head: str = "classifier"
) -> Any:
    """A cross-encoder (``BertForSequenceClassification``): ``logits`` from the ``[CLS]`` state.

    ``weights`` holds the encoder and ``{head}.weight`` [labels, hidden] / ``{head}.bias``, with
    BERT's pooler (``pooler.dense``) applied first when the weights include it.
    """
    import openvino

    encoder = _Encoder(weights, config)
    op = encoder.op
    input_ids, attention_mask, token_type_ids = _inputs()
    hidden = encoder.encode(input_ids, attention_mask, token_type_ids)
    cls = op.gather(hidden, encoder.const(0, _I64), encoder.const(1, _I64))  # [B, H]
    if "pooler.dense.weight" in weights:
        cls = op.tanh(encoder.linear(cls, "pooler.dense"))
    logits = encoder.linear(cls, head)
    logits.output(0).get_tensor().set_names({"logits"})
    return openvino.Model(
        [logits.output(0)], [input_ids, attention_mask, token_type_ids], "bert_cross_encoder"
    )


def build_rerank_graph(
    weights: dict[str, np.ndarray], config: BertConfig, cls_token_id: int, scale: float, shift: float
) -> Any:
    """An ``openvino.Model`` with the cross-encoder interface that scores by embedding cosine."""
    import openvino

    encoder = _Encoder(weights, config)
    op = encoder.op
    input_ids, attention_mask, token_type_ids = _inputs()
    segments = _PairSegments(encoder, input_ids, attention_mask, token_type_ids)
    query = encoder.mean_pooled_unit(*segments.query())
    document = encoder.mean_pooled_unit(*segments.document(cls_token_id))
    cosine = op.reduce_sum(op.multiply(query, document), encoder.const([1], _I64), True)
    logits = op.multiply(op.subtract(cosine, encoder.const(shift)), encoder.const(scale))
    logits.output(0).get_tensor().set_names({"logits"})
    model = openvino.Model(
        [logits.output(0)], [input_ids, attention_mask, token_type_ids], "bi_encoder_reranker"
    )
    model.set_rt_info(
        "bi-encoder cosine packaged as a cross-encoder; not a trained reranker", ["model_info", "note"]
    )
    model.set_rt_info(str(scale), ["model_info", "logit_scale"])
    model.set_rt_info(str(shift), ["model_info", "logit_shift"])
    return model


class _PairSegments:
    """Cuts ``[CLS] q [SEP] d [SEP]`` (padded on either side) back into two encoder inputs.

    ``token_type_ids`` is 0 over ``[CLS] q [SEP]`` and 1 over ``d [SEP]``, so the split does not
    depend on where a ``[SEP]`` appears (a literal "[SEP]" typed in the query is harmless).
    """

    def __init__(self, encoder: _Encoder, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> None:
        op, const = encoder.op, encoder.const
        self._op, self._const, self._ids = op, const, input_ids
        length = op.gather(op.shape_of(input_ids), const([1], _I64), const(0, _I64))
        self._last = op.subtract(length, const([1], _I64))
        one_row = const([1], _I64)
        self._query_len = op.reduce_sum(
            op.multiply(attention_mask, op.subtract(const(1, _I64), token_type_ids)), one_row, True
        )
        self._document_len = op.reduce_sum(op.multiply(attention_mask, token_type_ids), one_row, True)
        leading_pads = op.convert(op.equal(op.cumsum(attention_mask, const(1, _I64)), const(0, _I64)), "i64")
        self._start = op.reduce_sum(leading_pads, one_row, True)

    def query(self) -> tuple[Any, Any]:
        """``[CLS] q [SEP]`` and its mask, trimmed to the longest query in the batch."""
        ids, mask, _ = self._take(self._start, self._query_len)
        return ids, mask

    def document(self, cls_token_id: int) -> tuple[Any, Any]:
        """``[CLS] d [SEP]``: the query's closing ``[SEP]`` slot relabelled as ``[CLS]``."""
        op, const = self._op, self._const
        offset = op.add(self._start, op.subtract(self._query_len, const(1, _I64)))
        ids, mask, positions = self._take(offset, op.add(self._document_len, const(1, _I64)))
        ids = op.select(op.equal(positions, const(0, _I64)), const(cls_token_id, _I64), ids)
        return ids, mask

    def _take(self, offset: Any, valid: Any) -> tuple[Any, Any, Any]:
        op, const = self._op, self._const
        longest = op.reduce_max(valid, const([0, 1], _I64), False)
        positions = op.unsqueeze(op.range(const(0, _I64), longest, const(1, _I64), "i64"), const([0], _I64))
        index = op.minimum(op.add(offset, positions), self._last)
        mask = op.convert(op.less(positions, valid), "i64")
        tokens = op.multiply(op.gather(self._ids, index, const(1, _I64), 1), mask)
        return tokens, mask, positions


def convert_tokenizer(hf_folder: Path, output: Path) -> int:
    """Write ``openvino_tokenizer.xml``/``.bin`` for a Hugging Face tokenizer; returns its CLS id."""
    import openvino
    import openvino_tokenizers
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(hf_folder))
    openvino.save_model(
        openvino_tokenizers.convert_tokenizer(tokenizer), str(output / "openvino_tokenizer.xml")
    )
    return int(tokenizer.cls_token_id)
