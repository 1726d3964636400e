"""Checks on request inputs that every transport shares: clear errors, never silent truncation."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

from .errors import InvalidRequestError
from .schema import ChatMessage, GenerationOptions, ImagePart, VisionMessage
from .settings import Settings

__all__ = [
    "MAX_STOP_STRINGS",
    "chat_input",
    "check_dimensions",
    "check_sampling",
    "check_text",
    "rerank_top_n",
    "stop_strings",
    "text_list",
    "truncate_dimensions",
    "vision_chat",
]

IMAGE_TAG = "<ov_genai_image_{}>"
"""GenAI's model-independent tag for the N-th image of a request (0-based)."""
_RESERVED_TAGS = ("<ov_genai_image_", "<ov_genai_video_")


@dataclass(frozen=True)
class VisionChat:
    """A chat for a VLM: plain messages (images marked by tags, or none), and the images' sources."""

    messages: list[dict[str, str]]
    images: list[str] = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)


def chat_input(prompt: str | None, messages: list[ChatMessage] | None) -> str | list[ChatMessage]:
    """The prompt or the chat, exactly one of them, non-empty, ending with a user turn."""
    if (prompt is None) == (messages is None):
        raise InvalidRequestError("give exactly one of 'prompt' (a string) or 'messages' (a chat)")
    if prompt is not None:
        if not has_content(prompt):
            raise InvalidRequestError(
                "'prompt' is empty (no visible characters); give the text to respond to"
            )
        return prompt
    assert messages is not None
    if not messages:
        raise InvalidRequestError("'messages' is empty; give at least one {role, content} message")
    if messages[-1].role not in ("user", "tool"):
        raise InvalidRequestError(
            f"the last message is the {messages[-1].role}'s; end the chat with a user (or tool) message"
        )
    return messages


SMALLEST_SAMPLING_VALUE = 1e-6
"""The least temperature and top_p above 0 (the engine keeps them as 32-bit floats: 1e-50 is 0 there,
which it refuses with an error of its own)."""


def check_sampling(options: GenerationOptions) -> None:
    """Refuse sampling options the engine cannot take, and those greedy decoding would ignore."""
    for name in ("temperature", "top_p"):
        value = getattr(options, name)
        if value is not None and 0 < value < SMALLEST_SAMPLING_VALUE:
            instead = "0 for greedy decoding, or " if name == "temperature" else ""
            raise InvalidRequestError(
                f"{name} {value:g} is too small for the engine: give {instead}at least "
                f"{SMALLEST_SAMPLING_VALUE:g}",
                name,
            )
    if options.temperature == 0:
        extra = [name for name in ("top_p", "top_k", "seed") if getattr(options, name) is not None]
        if extra:
            raise InvalidRequestError(
                f"temperature 0 means greedy decoding, where {', '.join(extra)} would have no effect; "
                "remove them, or give a temperature above 0 to sample"
            )


MAX_STOP_STRINGS = 16


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """The stop strings of a request as a list: none empty, at most ``MAX_STOP_STRINGS``."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop)
    if any(not item for item in items):
        raise InvalidRequestError("stop strings must not be empty")
    if len(items) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(items)}")
    return items


def text_list(texts: str | list[str], name: str, settings: Settings) -> list[str]:
    """A list of non-empty texts within the configured limits."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise InvalidRequestError(f"'{name}' is empty; give at least one text", name)
    if len(items) > settings.max_texts:
        raise InvalidRequestError(
            f"'{name}' has {len(items)} texts; at most {settings.max_texts} per call (split the call)", name
        )
    for index, text in enumerate(items):
        where = f"{name}[{index}]" if not isinstance(texts, str) else name
        check_text(text, where, settings, argument=name)
    total = sum(len(text) for text in items)
    if total > settings.max_total_chars:
        raise InvalidRequestError(
            f"'{name}' has {total} characters in all; at most {settings.max_total_chars} per call", name
        )
    return items


_MARKS = ("Mn", "Me")  # combining marks (and variation selectors): nothing to see on their own


def has_content(text: str) -> bool:
    """Whether ``text`` has a visible character: only whitespace, control and format characters and
    lone combining marks (which tokenizers drop) count as empty. A reranker given nothing but those
    fails inside GenAI."""
    return any(_visible(char) for char in text)


def _visible(char: str) -> bool:
    return char.isprintable() and not char.isspace() and unicodedata.category(char) not in _MARKS


def check_text(
    text: str, name: str, settings: Settings, limit: int | None = None, argument: str | None = None
) -> None:
    """One non-empty text within the per-text limit (``name`` as messages show it, ``argument`` the
    argument it is or lies in)."""
    most = limit or settings.max_text_chars
    if not has_content(text):
        raise InvalidRequestError(
            f"{name} is empty (no visible characters); every text must have content", argument
        )
    if len(text) > most:
        raise InvalidRequestError(
            f"{name} has {len(text)} characters; at most {most} (split it up)", argument
        )


def rerank_top_n(top_n: int | None, documents: int) -> int:
    """How many results to return: all documents unless the caller asks for fewer."""
    if top_n is None:
        return documents
    if top_n < 1:
        raise InvalidRequestError("'top_n' must be at least 1; leave it out to get every document")
    return min(top_n, documents)


def check_dimensions(dimensions: int | None, native: int) -> None:
    """Refuse more dimensions than the model's vectors have."""
    if dimensions is not None and dimensions > native:
        raise InvalidRequestError(
            f"'dimensions' is {dimensions}, but this model's vectors have {native}", "dimensions"
        )


def truncate_dimensions(vectors: list[list[float]], dimensions: int | None, native: int) -> list[list[float]]:
    """Matryoshka-style: keep the first ``dimensions`` values, always re-normalised to unit length."""
    if dimensions is None:
        return vectors
    check_dimensions(dimensions, native)
    return [_unit(vector[:dimensions]) for vector in vectors]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else vector


def vision_chat(
    prompt: str | None,
    messages: list[VisionMessage] | None,
    images: list[str],
    max_images: int,
    require_image: bool = True,
) -> VisionChat:
    """The chat and image sources of a describe_image call, checked.

    With ``prompt``, the images go where the model's own template puts them. With ``messages``,
    each image part becomes a tag at its place, and ``images`` open the last user message.
    """
    if (prompt is None) == (messages is None):
        raise InvalidRequestError("give exactly one of 'prompt' (a string) or 'messages' (a chat)")
    if prompt is not None:
        _check_untagged(prompt, "'prompt'")
        if not has_content(prompt):
            raise InvalidRequestError(
                "'prompt' is empty (no visible characters); say what to do with the image"
            )
        chat = VisionChat([{"role": "user", "content": prompt}], list(images), _image_names(images))
    else:
        assert messages is not None
        chat = _tagged_chat(messages, images)
    if not chat.images and require_image:
        raise InvalidRequestError(
            "no image given: pass 'image' (a path, base64 or data: URL) or image_url parts in 'messages'; "
            "for text alone use generate"
        )
    if len(chat.images) > max_images:
        raise InvalidRequestError(f"{len(chat.images)} images given; at most {max_images} per call")
    return chat


def _image_names(images: list[str]) -> list[str]:
    return ["image"] if len(images) == 1 else [f"image[{index}]" for index in range(len(images))]


def _tagged_chat(messages: list[VisionMessage], extra_images: list[str]) -> VisionChat:
    """The chat with each image of the last message tagged at its place.

    GenAI binds every image of a chat to its last message (a tag in an earlier one fails the call:
    "Missing image/video with index 0"), so the images of earlier turns open the last message, in
    the order they were sent, before ``extra_images``: a follow-up ("are you sure?") still sees them.
    """
    if not messages:
        raise InvalidRequestError("'messages' is empty; give at least one {role, content} message")
    if messages[-1].role != "user":
        raise InvalidRequestError(
            f"the last message is the {messages[-1].role}'s; end the chat with a user message"
        )
    earlier: list[tuple[str, str]] = []  # (source, name) of images in earlier turns
    chat = [_turn(message, number, earlier) for number, message in enumerate(messages[:-1])]
    leading = earlier + list(zip(extra_images, _image_names(extra_images), strict=True))
    own: list[tuple[str, str]] = []
    last = _turn(messages[-1], len(messages) - 1, own, tags_from=len(leading))
    last["content"] = "".join(IMAGE_TAG.format(index) for index in range(len(leading))) + last["content"]
    images = leading + own
    return VisionChat([*chat, last], [source for source, _ in images], [name for _, name in images])


def _turn(
    message: VisionMessage, number: int, images: list[tuple[str, str]], tags_from: int | None = None
) -> dict[str, str]:
    """A message as text, its images added to ``images`` as (source, name); with ``tags_from``, each
    image is tagged at its place, numbered from there (the last message), else left out (earlier
    ones: their images open the last message)."""
    where = f"messages[{number}]"
    if isinstance(message.content, str):
        _check_untagged(message.content, where)
        return {"role": message.role, "content": message.content}
    pieces: list[str] = []
    for index, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            _check_user_image(message, where)
            if tags_from is not None:
                pieces.append(IMAGE_TAG.format(tags_from + len(images)))
            images.append((part.image_url.url, f"{where}.content[{index}]"))
        else:
            _check_untagged(part.text, f"{where}.content[{index}]")
            pieces.append(part.text)
    return {"role": message.role, "content": "".join(pieces)}


def _check_user_image(message: VisionMessage, where: str) -> None:
    if message.role != "user":
        raise InvalidRequestError(f"{where} is the {message.role}'s; only user messages may hold images")


def _check_untagged(text: str, where: str) -> None:
    if any(tag in text for tag in _RESERVED_TAGS):
        raise InvalidRequestError(
            f"{where} contains a reserved image tag ('<ov_genai_image_N>'); put images in image_url "
            "parts or 'image' instead"
        )
