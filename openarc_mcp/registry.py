"""Model records and their lifecycle, and the (model type, engine) → engine factory table.

All methods run on the event loop and never await, so each check-and-change is atomic per name:
a duplicate name is refused at once, "loaded" is only set once the worker exists, and a failed
load leaves a record that a new load under the same name replaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .errors import (
    ModelExistsError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelPathError,
    UnknownEngineError,
)
from .schema import ModelRecord, ModelSpec, ModelStatus, ModelType, RuntimeValue

if TYPE_CHECKING:  # the registry only holds a worker handle; it never calls the worker layer
    from .workers import ModelWorker

__all__ = ["DEFAULT_ENGINE", "ENGINES", "EngineKind", "ModelEntry", "ModelRegistry", "resolve_engine"]

DEFAULT_ENGINE = "genai"

EngineFactory = Callable[[Path, str, dict[str, RuntimeValue]], Any]
PathCheck = Callable[[Path], str | None]


@dataclass(frozen=True)
class EngineKind:
    """How to build one kind of engine, and how to tell whether a path holds its model."""

    factory: EngineFactory
    check_path: PathCheck
    description: str


def _build_llm(path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
    from .engines.llm import build_llm

    return build_llm(path, device, properties)


def _lacks(path: Path, files: tuple[str, ...], what: str = "") -> str | None:
    """Which of ``files`` a model folder is missing, as a sentence; ``None`` when it has them all."""
    if not path.is_dir():
        return f"it must be a folder with {', '.join(files)}"
    missing = [name for name in files if not (path / name).exists()]
    return f"the folder lacks {', '.join(missing)}{what}" if missing else None


def _check_llm_path(path: Path) -> str | None:
    if path.is_file():
        return None if path.suffix.lower() == ".gguf" else "an LLM file must be a .gguf file"
    return _lacks(
        path, ("openvino_model.xml", "openvino_tokenizer.xml"), ": it is not an exported OpenVINO LLM"
    )


def _build_vlm(path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
    from .engines.vlm import IsolatedVLMEngine

    return IsolatedVLMEngine(path, device, properties)


def _check_vlm_path(path: Path) -> str | None:
    # without preprocessor_config.json GenAI falls back to default image sizes and fails at inference
    files = ("openvino_language_model.xml", "openvino_vision_embeddings_model.xml", "openvino_tokenizer.xml")
    missing = _lacks(path, files, ": it is not an exported OpenVINO VLM")
    if missing is None and not (path / "preprocessor_config.json").exists():
        return (
            "the folder lacks preprocessor_config.json, which GenAI reads the image size from "
            "(transformers 5 nests it in processor_config.json as 'image_processor': copy that object "
            "into preprocessor_config.json, or convert the checkpoint with 'openarc-mcp models convert "
            "--type vlm')"
        )
    return missing


def _build_embedding(path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
    from .engines.embedding import EmbeddingEngine

    return EmbeddingEngine(path, device, properties)


def _build_reranker(path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
    from .engines.rerank import RerankEngine

    return RerankEngine(path, device, properties)


def _check_encoder_path(path: Path) -> str | None:
    return _lacks(path, ("openvino_model.xml", "openvino_tokenizer.xml"))


def _build_tts(path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
    from .engines.tts import IsolatedTTSEngine

    return IsolatedTTSEngine(path, device, properties)


def _check_tts_path(path: Path) -> str | None:
    # Kokoro phonemises with its lexicons: it has no OpenVINO tokenizer
    return _lacks(path, ("openvino_model.xml", "config.json", "voices"), ": it is not a Kokoro model folder")


def _build_whisper(path: Path, device: str, properties: dict[str, RuntimeValue]) -> Any:
    from .engines.whisper import IsolatedWhisperEngine

    return IsolatedWhisperEngine(path, device, properties)


def _check_whisper_path(path: Path) -> str | None:
    return _lacks(
        path, ("openvino_encoder_model.xml", "openvino_decoder_model.xml", "openvino_tokenizer.xml")
    )


ENGINES: dict[tuple[ModelType, str], EngineKind] = {
    (ModelType.LLM, DEFAULT_ENGINE): EngineKind(
        _build_llm, _check_llm_path, "OpenVINO GenAI LLMPipeline (OpenVINO IR folder or GGUF file)"
    ),
    (ModelType.VLM, DEFAULT_ENGINE): EngineKind(
        _build_vlm, _check_vlm_path, "OpenVINO GenAI VLMPipeline (optimum-intel export of a VLM)"
    ),
    (ModelType.EMBEDDING, DEFAULT_ENGINE): EngineKind(
        _build_embedding, _check_encoder_path, "OpenVINO GenAI TextEmbeddingPipeline"
    ),
    (ModelType.WHISPER, DEFAULT_ENGINE): EngineKind(
        _build_whisper, _check_whisper_path, "OpenVINO GenAI WhisperPipeline (optimum-intel export)"
    ),
    (ModelType.TTS, DEFAULT_ENGINE): EngineKind(
        _build_tts, _check_tts_path, "OpenVINO GenAI Text2SpeechPipeline (Kokoro folder with voices/*.npy)"
    ),
    (ModelType.RERANKER, DEFAULT_ENGINE): EngineKind(
        _build_reranker, _check_encoder_path, "OpenVINO GenAI TextRerankPipeline (cross-encoder folder)"
    ),
}


def resolve_engine(model_type: ModelType, engine: str | None) -> tuple[str, EngineKind]:
    """The engine name and kind for a model type; an unknown pair is a clear error."""
    name = engine or DEFAULT_ENGINE
    kind = ENGINES.get((model_type, name))
    if kind is not None:
        return name, kind
    offered = sorted(e for (t, e) in ENGINES if t == model_type)
    if offered:
        raise UnknownEngineError(
            f"no engine '{name}' for model type '{model_type}'; available: {', '.join(offered)}"
        )
    served = sorted({str(t) for (t, _) in ENGINES})
    raise UnknownEngineError(
        f"model type '{model_type}' has no engine in this version; served types: {', '.join(served)}"
    )


def confine_model_path(path: Path, roots: Sequence[Path]) -> None:
    """Refuse a path that does not lie in one of ``roots`` once symlinks and '..' are resolved.

    Checked before anything else is asked of the path, so a refusal tells nothing about it.
    """
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ModelPathError(f"model path {path!r} cannot be resolved: {exc}") from exc
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ModelPathError(
            f"model path {path} is outside the folders this server loads models from (its models "
            "directory and --model-roots); prepare or convert the model into the models directory, "
            "or ask the operator to add its folder to --model-roots"
        )


def check_model_path(spec: ModelSpec, kind: EngineKind) -> None:
    """Refuse paths that do not exist or do not hold a model of the spec's type."""
    try:
        if not spec.path.exists():
            raise ModelPathError(f"model path {spec.path} does not exist")
        problem = kind.check_path(spec.path)
    except OSError as exc:
        raise ModelPathError(f"model path {spec.path} cannot be read: {exc.strerror or exc}") from exc
    if problem:
        raise ModelPathError(f"model path {spec.path} is not a '{spec.model_type}' model: {problem}")


@dataclass
class ModelEntry:
    """A model the server has been asked to load, and what became of it."""

    spec: ModelSpec
    record: ModelRecord
    worker: ModelWorker | None = None
    settled: anyio.Event = field(default_factory=anyio.Event)
    ended: bool = False  # failed because its engine's process ended after it had loaded
    refused_argument: str | None = None  # the load failed for the caller's mistake in this argument


class ModelRegistry:
    """The models known to this server process, by name."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def get(self, name: str) -> ModelEntry | None:
        """The entry of that name, if any."""
        return self._entries.get(name)

    def entries(self) -> list[ModelEntry]:
        """Every entry, in name order."""
        return [self._entries[name] for name in sorted(self._entries)]

    def begin_load(self, spec: ModelSpec, engine: str, extra: Mapping[str, str | None]) -> ModelEntry:
        """Claim the name for a load; refuse a name in use unless its last load failed."""
        current = self._entries.get(spec.name)
        if current is not None and current.record.status is not ModelStatus.FAILED:
            raise ModelExistsError(_in_use_message(current))
        record = ModelRecord(
            name=spec.name,
            model_type=spec.model_type,
            engine=engine,
            device=spec.device,
            path=str(spec.path),
            status=ModelStatus.LOADING,
            runtime_config=spec.runtime_config,
            source=extra.get("source"),
            description=extra.get("description"),
        )
        entry = ModelEntry(spec=spec, record=record)
        self._entries[spec.name] = entry
        return entry

    def finish_load(self, entry: ModelEntry, worker: ModelWorker, seconds: float) -> None:
        """Mark the model loaded, now that its worker exists."""
        entry.worker = worker
        entry.record = entry.record.model_copy(
            update={"status": ModelStatus.LOADED, "load_time_s": round(seconds, 3)}
        )
        entry.settled.set()

    def fail_load(self, entry: ModelEntry, reason: str, refused_argument: str | None = None) -> None:
        """Mark the load failed; the name may be loaded again. ``refused_argument``: the load's
        argument at fault, when the caller's mistake failed it."""
        entry.refused_argument = refused_argument
        entry.record = entry.record.model_copy(update={"status": ModelStatus.FAILED, "error": reason})
        entry.settled.set()

    def begin_unload(self, name: str) -> ModelEntry:
        """Mark a loaded model as unloading; a failed or still loading one is forgotten at once."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(f"no model named '{name}' is loaded; loaded: {self._loaded_names()}")
        status = entry.record.status
        if status is ModelStatus.UNLOADING:
            raise ModelNotReadyError(f"model '{name}' is already unloading")
        if status is ModelStatus.LOADED:
            entry.record = entry.record.model_copy(update={"status": ModelStatus.UNLOADING})
            return entry
        self.finish_unload(entry)  # failed, or loading: callers waiting for the load are told
        entry.settled.set()
        return entry

    def finish_unload(self, entry: ModelEntry) -> None:
        """Forget the model; its record's final status is 'unloaded'."""
        entry.record = entry.record.model_copy(update={"status": ModelStatus.UNLOADED})
        entry.worker = None
        if self._entries.get(entry.spec.name) is entry:
            del self._entries[entry.spec.name]

    def _loaded_names(self) -> str:
        names = [e.spec.name for e in self._entries.values() if e.record.status is ModelStatus.LOADED]
        return ", ".join(sorted(names)) or "none"


def _in_use_message(entry: ModelEntry) -> str:
    record = entry.record
    return (
        f"the name '{record.name}' is already in use ({record.status} {record.model_type} model "
        f"from {record.path}); unload it first or choose another name"
    )
