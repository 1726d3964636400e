"""A tiny LLaVA with random weights, built locally: plumbing for ``describe_image`` only.

No PyPI package carries real VLM weights, so the catalogue builds this one: a CLIP vision tower
(30 px images, 6 px patches), a two-layer Llama of width 64 (about 150 thousand parameters in all),
a byte-level BPE tokenizer trained here with an ``<image>`` token, a chat template and a CLIP image
processor. Its answers are noise; it proves that images, prompts and options reach a real
``VLMPipeline`` and come back, and matches transformers' own output token for token.

Needs the ``convert`` extra (torch, transformers); imported only when the model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CatalogueError
from .export import CONVERT_INSTALL

__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "build_tiny_llava", "train_tiny_tokenizer"]

IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
_IMAGE_SIZE, _PATCH_SIZE = 30, 6
_CORPUS = (
    "a photo of a red square on a white background",
    "the image shows a small cat sitting on a blue mat next to a window",
    "describe this image in one sentence",
    "what is in the picture and what colour is it",
    "there are two brown dogs running in a green park",
    "a chart with three bars, the tallest one on the left",
    "a page of printed text with a title and two columns",
    "the screenshot shows a form with a name field and a submit button",
    "a mountain lake at sunset with trees on the shore",
    "a close-up of a circuit board with chips and wires",
)


def build_tiny_llava(output: Path, seed: int = 0) -> None:
    """Write a Hugging Face LLaVA checkpoint (weights, tokenizer, processor) to ``output``."""
    try:
        import torch
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )
    except ImportError as exc:
        raise CatalogueError(
            f"building the tiny LLaVA needs the 'convert' extra (torch, optimum-intel): {exc}. "
            f"Install it with: {CONVERT_INSTALL}"
        ) from exc

    tokenizer = train_tiny_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=_IMAGE_SIZE, patch_size=_PATCH_SIZE, projection_dim=32,
    )  # fmt: skip
    special = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _token_roles().items()}
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=False, **special,
    )  # fmt: skip
    patches = (_IMAGE_SIZE // _PATCH_SIZE) ** 2
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        image_seq_length=patches, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    for name, value in special.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(output)
    size = {"shortest_edge": _IMAGE_SIZE}
    crop = {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size=size, crop_size=crop), tokenizer=tokenizer,
        patch_size=_PATCH_SIZE, vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    processor.save_pretrained(output)


def _token_roles() -> dict[str, str]:
    return {"bos_token_id": "<s>", "eos_token_id": "</s>", "pad_token_id": "<pad>"}


def train_tiny_tokenizer() -> Any:
    """A byte-level BPE (any text encodes) trained on a few sentences, with the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(_SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    bpe.train_from_iterator(list(_CORPUS) * 8, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        chat_template=CHAT_TEMPLATE, extra_special_tokens={"image_token": IMAGE_TOKEN},
    )  # fmt: skip
