"""`describe_image` on a real VLMPipeline, with the catalogue's tiny random LLaVA (plumbing only).

Its weights are random, so its answers are noise; these tests prove that images, prompts and
options reach GenAI and come back, and that the text is exactly what transformers generates from
the same checkpoint and image (computed in the set-up).
"""

from __future__ import annotations

import base64
import io
import logging
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from openarc_mcp.app import OpenArcApp
from openarc_mcp.errors import ModelLoadError
from openarc_mcp.library.export import ExportOptions, export_checkpoint
from openarc_mcp.library.tiny_vlm import build_tiny_llava
from openarc_mcp.schema import LoadRequest, ModelType
from openarc_mcp.transports.mcp_server import build_mcp_server

from .conftest import LLM, VLM, make_settings, structured, text_of

pytestmark = pytest.mark.anyio

GREEDY = {"temperature": 0, "max_tokens": 12}


def _pixels(seed: int, size: tuple[int, int] = (40, 50)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for seed in (0, 1):
        path = folder / f"image{seed}.png"
        path.write_bytes(_png_bytes(_pixels(seed)))
        paths.append(path)
    return paths


async def _describe(client: Client, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool("describe_image", {"model": VLM, **GREEDY, **arguments}))


async def test_path_base64_and_data_url_give_the_same_text(client: Client, images: list[Path]) -> None:
    encoded = base64.b64encode(images[0].read_bytes()).decode("ascii")
    sources = [str(images[0]), images[0].as_uri(), encoded, f"data:image/png;base64,{encoded}"]
    results = [await _describe(client, image=source) for source in sources]
    assert len({result["text"] for result in results}) == 1
    assert results[0]["text"]
    assert results[0]["model"] == VLM
    assert results[0]["usage"]["prompt_tokens"] > 25  # the 25 image tokens and the prompt
    assert results[0]["usage"]["completion_tokens"] == 12 or results[0]["finish_reason"] == "stop"


async def test_text_block_carries_the_text(client: Client, images: list[Path]) -> None:
    result = await client.call_tool("describe_image", {"model": VLM, "image": str(images[0]), **GREEDY})
    assert text_of(result) == structured(result)["text"]


async def test_different_images_give_different_answers(client: Client, images: list[Path]) -> None:
    first, second = [await _describe(client, image=str(path)) for path in images]
    assert first["text"] != second["text"]


async def test_chat_with_image_url_parts(client: Client, images: list[Path]) -> None:
    messages = [
        {"role": "system", "content": "You describe pictures."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare "},
                {"type": "image_url", "image_url": {"url": str(images[0]), "detail": "low"}},
                {"type": "text", "text": " with "},
                {"type": "image_url", "image_url": {"url": str(images[1])}},
            ],
        },
    ]
    both = await _describe(client, messages=messages)
    one = await _describe(client, messages=[{"role": "user", "content": "Describe."}], image=str(images[0]))
    assert both["usage"]["prompt_tokens"] >= one["usage"]["prompt_tokens"] + 25  # the second image counted
    assert both["text"] and one["text"]


async def test_a_follow_up_question_sees_the_images_of_earlier_turns(
    client: Client, images: list[Path]
) -> None:
    """GenAI binds a chat's images to its last message (a tag in an earlier one failed the call:
    "Missing image/video with index 0"): earlier turns' images open the last message."""

    def image(path: Path) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": str(path)}}

    asked = {"role": "user", "content": [{"type": "text", "text": "What colour is this?"}, image(images[0])]}
    follow_up = [
        asked,
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Are you sure?"},
    ]
    answered = await _describe(client, messages=follow_up)
    alone = await _describe(
        client, messages=[{"role": "user", "content": "Are you sure?"}], image=str(images[0])
    )
    assert answered["text"] and answered["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"]
    another = {"role": "user", "content": [{"type": "text", "text": "And this one?"}, image(images[1])]}
    both = await _describe(client, messages=[*follow_up[:2], another])
    one = await _describe(client, messages=[*follow_up[:2], {"role": "user", "content": "And this one?"}])
    assert both["text"] and both["usage"]["prompt_tokens"] >= one["usage"]["prompt_tokens"] + 15


def test_earlier_turns_images_open_the_last_message_in_the_order_sent() -> None:
    from openarc_mcp.inputs import vision_chat
    from openarc_mcp.schema import VisionMessage

    def image(url: str) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": url}}

    messages = [
        VisionMessage.model_validate(
            {"role": "user", "content": [image("a"), {"type": "text", "text": "One?"}]}
        ),
        VisionMessage.model_validate({"role": "assistant", "content": "Yes."}),
        VisionMessage.model_validate(
            {"role": "user", "content": [{"type": "text", "text": "Two "}, image("b")]}
        ),
    ]
    chat = vision_chat(None, messages, ["c"], max_images=8)
    assert chat.messages == [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "<ov_genai_image_0><ov_genai_image_1>Two <ov_genai_image_2>"},
    ]
    assert (chat.images, chat.image_names) == (
        ["a", "c", "b"],
        ["messages[0].content[0]", "image", "messages[2].content[1]"],
    )


async def test_wrong_model_type_is_refused(client: Client, images: list[Path]) -> None:
    result = await client.call_tool("describe_image", {"model": LLM, "image": str(images[0])})
    assert result.is_error
    assert "needs a model of type 'vlm'" in text_of(result)


# ----- parity with transformers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny LLaVA built as a Hugging Face checkpoint and exported with our export code."""
    root = tmp_path_factory.mktemp("tiny-llava")
    build_tiny_llava(root / "hf", seed=7)
    export_checkpoint(root / "hf", root / "ov", ModelType.VLM, ExportOptions(weight_format="fp32"))
    return root / "hf", root / "ov"


def _transformers_greedy(
    hf: Path, pictures: list[np.ndarray], prompt: str, max_tokens: int
) -> tuple[str, int]:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(str(hf))
    model = LlavaForConditionalGeneration.from_pretrained(str(hf)).eval()
    content = [{"type": "image"} for _ in pictures] + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.fromarray(p) for p in pictures], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    prompt_length = int(inputs["input_ids"].shape[1])
    return processor.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True), prompt_length


@pytest.fixture
async def parity_client(models_dir: Path, checkpoint: tuple[Path, Path]) -> AsyncIterator[Client]:
    async with OpenArcApp(make_settings(models_dir)) as app:
        request = LoadRequest(model_name="parity-llava", model_path=checkpoint[1], model_type=ModelType.VLM)
        await app.load_model(request)
        async with Client(build_mcp_server(app)) as client:
            yield client


@pytest.mark.parametrize("count", [1, 2])
async def test_text_matches_transformers_greedy_output(
    parity_client: Client, checkpoint: tuple[Path, Path], images: list[Path], count: int
) -> None:
    pictures = [np.asarray(Image.open(path).convert("RGB")) for path in images[:count]]
    expected, prompt_length = _transformers_greedy(checkpoint[0], pictures, "Describe this image.", 16)
    arguments = {"model": "parity-llava", "image": [str(p) for p in images[:count]], "max_tokens": 16}
    result = structured(await parity_client.call_tool("describe_image", {**arguments, "temperature": 0}))
    assert result["text"] == expected
    assert result["usage"]["prompt_tokens"] == prompt_length


# ----- cancellation ---------------------------------------------------------------------------


async def test_cancelling_stops_the_generation(models_dir: Path, images: list[Path]) -> None:
    async with OpenArcApp(make_settings(models_dir)) as app:
        await app.load_model(LoadRequest(model_name=VLM))
        first_text = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if message and not message.startswith("loading"):
                first_text.set()

        async with Client(build_mcp_server(app), mode="legacy") as client:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    arguments = {"model": VLM, "image": str(images[0]), "max_tokens": 1900, "temperature": 0}
                    group.start_soon(
                        lambda: client.call_tool("describe_image", arguments, progress_callback=on_progress)
                    )
                    await first_text.wait()
                    group.cancel_scope.cancel()
                after = await _describe(client, image=str(images[1]))
        assert after["text"]
        details = await app.model_details(VLM)
        assert details.cancelled_requests == 1
        assert details.record.requests == 1


# ----- bad input ------------------------------------------------------------------------------


def _png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming a size, with a correct checksum (no pixel data needed)."""
    data = bytearray(_png_bytes(_pixels(0, (2, 2))))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length, type, 13 bytes of data, crc
    data[ihdr + 8 : ihdr + 16] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = crc.to_bytes(4, "big")
    return bytes(data)


def _bmp() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(0, (4, 4))).save(buffer, format="BMP")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"image": "https://example.com/cat.png"}, "offline"),
        ({"image": "/no/such/image.png"}, "no file at"),
        ({"image": "/tmp"}, "is a directory"),
        ({"image": "not//valid//base64!!"}, "no file at"),
        ({"image": "data:image/png;base64,@@@@"}, "not valid base64"),
        (
            {"image": base64.b64encode(b"just some text, not an image").decode()},
            "not an image Pillow can read",
        ),
        ({"image": base64.b64encode(_bmp()).decode()}, "is a BMP image; supported: PNG, JPEG, WebP, GIF"),
        ({"image": base64.b64encode(_png_with_size(20000, 20000)).decode()}, "= 400000000 pixels; at most"),
        ({"image": base64.b64encode(_png_with_size(9000, 5000)).decode()}, "at most 40000000"),
        ({"image": base64.b64encode(_png_bytes(_pixels(0))[:60]).decode()}, "corrupt or truncated"),
        ({"image": []}, "no image given"),
        ({"prompt": "Describe."}, "no image given"),
        ({"image": ["x"] * 9}, "at most 8 per call"),
        ({"prompt": "Look at <ov_genai_image_3>", "image": "x"}, "reserved image tag"),
        (
            {"messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", "image": "x"},
            "exactly one of 'prompt'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                    {"role": "user", "content": "And?"},
                ]
            },
            "only user messages may hold images",
        ),
        ({"messages": [{"role": "assistant", "content": "Hi"}], "image": "x"}, "end the chat with a user"),
        ({"image": "x", "temperature": 0, "top_k": 5}, "greedy"),
    ],
)
async def test_bad_input_gets_a_clear_error(
    client: Client, tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    result = await client.call_tool("describe_image", {"model": VLM, **arguments})
    assert result.is_error
    assert message in text_of(result), text_of(result)


async def test_text_file_named_png_is_refused_without_echoing_it(client: Client, tmp_path: Path) -> None:
    fake = tmp_path / "secret.png"
    fake.write_text("password=hunter2\n")
    result = await client.call_tool("describe_image", {"model": VLM, "image": str(fake)})
    assert result.is_error
    assert "not an image" in text_of(result)
    assert "hunter2" not in text_of(result)


async def test_the_model_still_answers_after_bad_input(client: Client, images: list[Path]) -> None:
    bad = await client.call_tool("describe_image", {"model": VLM, "image": "/no/such.png"})
    assert bad.is_error
    assert (await _describe(client, image=str(images[0])))["text"]


async def test_vlm_folder_without_preprocessor_config_says_how_to_fix_it(
    client: Client, models_dir: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "vlm"
    shutil.copytree(models_dir / VLM, folder)
    (folder / "preprocessor_config.json").unlink()
    arguments = {"model_name": "no-preprocessor", "model_path": str(folder), "model_type": "vlm"}
    result = await client.call_tool("load_model", arguments)
    assert result.is_error
    assert "lacks preprocessor_config.json" in text_of(result) and "models convert --type vlm" in text_of(
        result
    )


async def test_a_lower_case_runtime_option_is_refused_for_a_vlm_too(
    fresh_app: OpenArcApp, caplog: pytest.LogCaptureFixture
) -> None:
    """A VLM has no engine options of its own: a lower-case key is a typo, not an OpenVINO property.
    The caller's mistake is logged as a warning, without a traceback (no server fault to debug)."""
    caplog.set_level(logging.INFO, "openarc_mcp.app")
    with pytest.raises(ModelLoadError, match="unknown option 'max_pixels'"):
        await fresh_app.load_model(LoadRequest(model_name=VLM, runtime_config={"max_pixels": 5}))
    failed = [r for r in caplog.records if "failed to load" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in failed] == [(logging.WARNING, None)], failed


async def test_a_prompt_past_the_language_models_positions_is_refused(
    client: Client, images: list[Path]
) -> None:
    """The tiny LLaVA's language model has 2,048 positions and its tokenizer cuts nowhere: a longer
    prompt was generated from anyway (garbage past the table); it is refused, naming the limit."""
    result = await client.call_tool(
        "describe_image", {"model": VLM, "image": str(images[0]), "prompt": "hello " * 2100}
    )
    assert result.is_error
    assert "context holds fewer than 2048" in text_of(result), text_of(result)
