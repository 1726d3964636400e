"""Plain data shared by every layer: model types, load specs, records and results.

These are pydantic models so that transports can publish them as schemas unchanged; engines
receive plain values taken from them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

__all__ = [
    "MAX_SCHEMA_CHARS",
    "MODEL_NAME_PATTERN",
    "SCHEMA_COMPILE_BUDGET_S",
    "UNENFORCED_KEYWORDS",
    "AudioFormat",
    "ChatMessage",
    "ContentPart",
    "DeviceInfo",
    "EmbedResult",
    "EmbeddingUsage",
    "FinishReason",
    "GenerateResult",
    "GenerationMetrics",
    "GenerationOptions",
    "ImagePart",
    "ImageURL",
    "LoadRequest",
    "ModelDetails",
    "ModelRecord",
    "ModelSpec",
    "ModelStatus",
    "ModelType",
    "RerankItem",
    "RerankResult",
    "RuntimeValue",
    "SpeakResult",
    "TextPart",
    "TokenUsage",
    "TranscribeResult",
    "TranscriptSegment",
    "VisionMessage",
    "inline_refs",
]

RuntimeValue = str | int | float | bool


def _device_name(value: str) -> str:
    """OpenVINO's device names are upper case ('GPU.1', 'AUTO:GPU,CPU'): 'gpu' means 'GPU'."""
    name = value.strip().upper()
    if not name:
        raise ValueError("a device is named, as in CPU, GPU, GPU.1, NPU or AUTO")
    return name


DeviceName = Annotated[str, AfterValidator(_device_name)]


class _Schema(BaseModel):
    """Base of these models: each builds its validator and serializer at its first use, not at
    import. Serving over stdio imports this module before it answers the handshake, and uses most
    of these models only once the tools are registered, after it (~15 ms of start-up)."""

    model_config = ConfigDict(defer_build=True)


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``{"$ref": "#/$defs/X"}`` replaced by the definition it names (keywords
    beside the ref, such as a description, kept) and ``$defs`` dropped (and with them a
    discriminator's ``mapping``, which names definitions by reference): what hosts and models read
    without resolving references (some function-calling APIs do not), and cheaper for a client
    that validates results. A recursive definition cannot be inlined and raises ``ValueError``."""
    definitions: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            name = reference.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"schema definition {name!r} refers to itself")
            siblings = {key: resolve(value, seen) for key, value in node.items() if key != "$ref"}
            return resolve(definitions[name], (*seen, name)) | siblings
        inlined = {key: resolve(value, seen) for key, value in node.items() if key != "$defs"}
        if isinstance(inlined.get("discriminator"), dict):  # its mapping names definitions by ref
            inlined["discriminator"] = {
                key: value for key, value in inlined["discriminator"].items() if key != "mapping"
            }
        return inlined

    inlined: dict[str, Any] = resolve(schema, ())
    return inlined


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
MAX_MODEL_NAME = 128


class ModelType(StrEnum):
    """What a model does; each tool needs one type."""

    LLM = "llm"
    VLM = "vlm"
    WHISPER = "whisper"
    TTS = "tts"
    EMBEDDING = "embedding"
    RERANKER = "reranker"


class ModelStatus(StrEnum):
    """Where a model is in its lifecycle: loading → loaded → unloading → unloaded; or failed."""

    NOT_PREPARED = "not_prepared"
    AVAILABLE = "available"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"
    FAILED = "failed"


class ModelSpec(_Schema):
    """Everything needed to load one model."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=MODEL_NAME_PATTERN)]
    path: Path
    model_type: ModelType
    device: DeviceName = "CPU"
    engine: str | None = None
    runtime_config: dict[str, RuntimeValue] = Field(default_factory=dict)


class GenerationMetrics(_Schema):
    """Timing of one generation, from GenAI's own performance metrics."""

    ttft_ms: float = Field(description="Time to first token, in milliseconds.")
    tokens_per_second: float = Field(description="Decode throughput, generated tokens per second.")
    total_ms: float = Field(description="Whole generation time inside the engine, in milliseconds.")


class ModelRecord(_Schema):
    """What the server knows about one model."""

    name: str
    model_type: ModelType
    engine: str | None = None
    device: str | None = None
    path: str | None = None
    status: ModelStatus
    load_time_s: float | None = Field(default=None, description="Seconds the last load took.")
    error: str | None = Field(default=None, description="Why the last load failed, if it did.")
    source: str | None = Field(default=None, description="Where the weights come from.")
    description: str | None = None
    runtime_config: dict[str, RuntimeValue] = Field(default_factory=dict)
    requests: int = Field(default=0, description="Requests answered with a result since loading.")
    failures: int = Field(default=0, description="Requests answered with an error since loading.")
    last_metrics: GenerationMetrics | None = None


class ChatMessage(_Schema):
    """One message of a chat, as in OpenAI's API."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class TextPart(_Schema):
    """A piece of text in a message's content list."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ImageURL(_Schema):
    """Where an image comes from, as in OpenAI's API (but offline: no http URLs)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, description="A local file path (or file:// URL), base64 data, or a data:image/... URL."
    )
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None,
        description="Accepted for OpenAI compatibility and has no effect: the model's own image "
        "processor fixes the resolution.",
    )


class ImagePart(_Schema):
    """An image in a message's content list."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class VisionMessage(_Schema):
    """One message of a chat about images: content is text, or a list of text and image parts."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


FinishReason = Literal["stop", "length", "cancelled"]


MAX_SCHEMA_CHARS = 65_536
"""The longest ``json_schema`` accepted, as compact JSON (each new schema is compiled per request)."""
SCHEMA_COMPILE_BUDGET_S = 5.0
"""A ``json_schema`` whose grammar takes longer to compile is refused (``engines/structured.py``)."""
UNENFORCED_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
"""JSON Schema keywords the engine's grammar does not hold to: refused rather than let pass."""


class GenerationOptions(_Schema):
    """Sampling and stopping options; ``None`` keeps the model's own default."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    """The text must be JSON matching this JSON Schema (sampling constrained to it)."""


class TokenUsage(_Schema):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int


class GenerateResult(_Schema):
    """The outcome of one ``generate`` call."""

    text: str = Field(description="The generated text, without the prompt and without stop strings.")
    finish_reason: Literal["stop", "length"] = Field(
        description="'stop': an end token or stop string; 'length': max_tokens or the end of the model's "
        "context reached."
    )
    usage: TokenUsage
    metrics: GenerationMetrics
    model: str = Field(description="Name of the model that generated the text.")


class LoadRequest(_Schema):
    """A request to load a model; path and type may come from the local library."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_path: Path | None = None
    model_type: ModelType | None = None
    device: str | None = None
    engine: str | None = None
    runtime_config: dict[str, RuntimeValue] = Field(default_factory=dict)


class ModelDetails(_Schema):
    """One model in full: its record, how it was loaded, and its queue."""

    record: ModelRecord
    spec: ModelSpec | None = Field(default=None, description="How the model was loaded.")
    queued_requests: int = Field(default=0, description="Requests waiting for this model now.")
    running_requests: int = Field(
        default=0, description="Requests the model works on now (several at once with continuous batching)."
    )
    cancelled_requests: int = Field(default=0, description="Requests stopped because their caller cancelled.")
    engine: dict[str, object] | None = Field(
        default=None, description="What the engine reports: pooling, dimensions, maximum length, ..."
    )
    batching: dict[str, int] | None = Field(
        default=None, description="Coalesced engine calls: batches, requests and items in them, largest."
    )
    library: dict[str, object] | None = Field(default=None, description="Metadata of the prepared folder.")


class EmbeddingUsage(_Schema):
    """Token counts of one embed request."""

    prompt_tokens: int = Field(description="Tokens embedded, after truncation to the model's maximum length.")


_VECTORS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "array", "description": "A vector: `dimensions` floats."},
}
"""The published schema of embedding vectors stops at the vectors: a client that validates results
against it (the Python SDK does, with jsonschema) would otherwise check every float of every vector,
which costs more than computing them (62 % of a 64-call burst in a profile)."""


class EmbedResult(_Schema):
    """The outcome of one ``embed`` call."""

    embeddings: Annotated[list[list[float]], WithJsonSchema(_VECTORS_SCHEMA)] = Field(
        description="One vector (a list of floats) per input text, in input order."
    )
    dimensions: int = Field(description="Length of each vector.")
    model: str
    usage: EmbeddingUsage


class RerankItem(_Schema):
    """One document's place in a ranking."""

    index: int = Field(description="Position of the document in the input list.")
    relevance_score: float = Field(description="Relevance to the query, 0..1; higher is better.")
    document: str


class RerankResult(_Schema):
    """The outcome of one ``rerank`` call, best document first."""

    results: list[RerankItem]
    model: str


AudioFormat = Literal["wav", "flac", "ogg", "mp3", "opus"]
"""Files speak writes: WAV (16-bit), FLAC, Ogg Vorbis, MP3, Ogg Opus (``.opus``)."""


class SpeakResult(_Schema):
    """The outcome of one ``speak`` call (the audio itself travels as an audio block or a file)."""

    sample_rate: int
    duration_s: float
    voice: str
    format: AudioFormat
    bytes: int = Field(description="Size of the encoded audio.")
    path: str | None = Field(default=None, description="Where the audio was written, if it was.")
    inline: bool = Field(description="Whether the audio is in the result as an audio block.")
    model: str


class TranscriptSegment(_Schema):
    """A stretch of a transcript with its timing."""

    start: float = Field(description="Start, in seconds from the beginning of the audio.")
    end: float = Field(description="End, in seconds.")
    text: str


class TranscriptWord(_Schema):
    """One word of a transcript with its timing."""

    word: str
    start: float = Field(description="Start, in seconds from the beginning of the audio.")
    end: float = Field(description="End, in seconds.")


class TranscribeResult(_Schema):
    """The outcome of one ``transcribe`` call."""

    text: str
    language: str | None = Field(description="Language of the speech, as detected or as given.")
    duration_s: float = Field(description="Length of the audio in seconds.")
    segments: list[TranscriptSegment] = Field(description="Timed segments, when timestamps were asked for.")
    words: list[TranscriptWord] = Field(
        default_factory=list, description="Timed words, when word timestamps were asked for."
    )
    model: str


class DeviceInfo(_Schema):
    """One OpenVINO device and its key properties."""

    name: str
    full_name: str
    properties: dict[str, str]
