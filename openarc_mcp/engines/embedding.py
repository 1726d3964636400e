"""Text embeddings on ``openvino_genai.TextEmbeddingPipeline``.

Pooling, normalisation, maximum length and instructions come from the model folder where it
says them (sentence-transformers' ``1_Pooling/config.json``, ``modules.json``,
``sentence_bert_config.json``, ``config_sentence_transformers.json``), and can be overridden with
``runtime_config`` options. GenAI's CLS default is never used by accident: a folder that says
nothing gets mean pooling, and the model's record says that it was assumed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidRequestError, ModelLoadError
from ..schema import RuntimeValue
from .base import StopFlag
from .devices import require_device
from .options import checked_max_length, model_positions, split_options
from .tokenizer_ir import TokenizerIR

__all__ = [
    "EMBEDDING_OPTIONS",
    "EmbeddingEngine",
    "EmbeddingOutput",
    "EmbeddingProfile",
    "InputType",
    "read_profile",
]

Pooling = Literal["cls", "mean", "last_token"]
InputType = Literal["document", "query"]
EMBEDDING_OPTIONS = ("pooling", "normalize", "max_length", "query_instruction", "document_instruction")
_RUN_MODULES = frozenset({"Transformer", "Pooling", "Normalize"})
"""The sentence-transformers modules an embedding pipeline reproduces (any other is refused)."""
_POOLING_FLAGS: dict[str, Pooling] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last_token",
}


@dataclass(frozen=True)
class EmbeddingProfile:
    """How this model turns token states into one vector, and where each choice came from."""

    pooling: Pooling
    normalize: bool
    max_length: int | None
    query_instruction: str
    document_instruction: str
    sources: dict[str, str]


@dataclass(frozen=True)
class EmbeddingOutput:
    """Vectors for a batch of texts, and the tokens they took."""

    vectors: list[list[float]]
    token_counts: list[int]


class EmbeddingEngine:
    """One ``TextEmbeddingPipeline``; embeds batches of texts."""

    def __init__(self, path: Path, device: str, properties: dict[str, RuntimeValue]) -> None:
        import openvino_genai

        require_device(device)
        options, ov_properties = split_options(properties, EMBEDDING_OPTIONS)
        profile = read_profile(path, options)
        self._tokenizer: TokenizerIR | None = TokenizerIR(path)  # not GenAI's: see tokenizer_ir.py
        if profile.max_length is None:  # the pipeline must cut where the tokens are counted
            profile = _with_model_limit(profile, _tokenizer_limit(self._tokenizer), model_positions(path))
        self.profile = profile
        self._pipe: Any = openvino_genai.TextEmbeddingPipeline(
            str(path), device, _pipeline_config(openvino_genai, self.profile), **ov_properties
        )
        self.max_length = self.profile.max_length or _tokenizer_limit(self._tokenizer)
        self.dimensions = len(self._pipe.embed_documents(["warm-up"])[0])

    def close(self) -> None:
        """Drop the pipeline so OpenVINO frees the compiled model."""
        self._pipe = None
        if self._tokenizer is not None:
            self._tokenizer.close()
            self._tokenizer = None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {"dimensions": self.dimensions, **asdict(self.profile), "max_length": self.max_length}

    def prefix(self, input_type: InputType) -> str:
        """The instruction put before texts of that kind."""
        return self.profile.query_instruction if input_type == "query" else self.profile.document_instruction

    def embed(
        self, texts: list[str], input_type: InputType, stop: StopFlag, chunk: int = 64
    ) -> EmbeddingOutput:
        """One vector per text, with the model's instruction prefixed; ``chunk`` texts per engine call.

        Stops between chunks once ``stop`` is set (the output is then incomplete; callers discard it).
        """
        inputs = [self.prefix(input_type) + text for text in texts]
        vectors: list[list[float]] = []
        counts: list[int] = []
        for start in range(0, len(inputs), chunk):
            if stop.is_set():
                break
            part = inputs[start : start + chunk]
            vectors += self._pipe.embed_documents(part)  # already lists of Python floats
            counts += self._count_tokens(part)
        return EmbeddingOutput(vectors=vectors, token_counts=counts)

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text became, truncated as the pipeline truncates (padding stays bounded)."""
        assert self._tokenizer is not None, "used after close"
        return self._tokenizer.token_counts(texts, self.max_length)


def read_profile(folder: Path, options: dict[str, RuntimeValue]) -> EmbeddingProfile:
    """The embedding profile: options first, then the folder's sentence-transformers files."""
    sources: dict[str, str] = {}
    _check_modules(folder)
    pooling = _choose(options, "pooling", _folder_pooling(folder), "mean", sources)
    if pooling not in ("cls", "mean", "last_token"):
        problem = f"pooling '{pooling}' is not supported by GenAI; use cls, mean or last_token"
        if "pooling" in options:  # the caller's
            raise InvalidRequestError(f"runtime_config option {problem}", "runtime_config")
        raise ModelLoadError(problem)
    normalize = _choose(options, "normalize", _folder_normalize(folder), True, sources)
    max_length = _choose(options, "max_length", _folder_max_length(folder), None, sources)
    if max_length is not None:
        max_length = checked_max_length(max_length, folder)
    prompts = _folder_prompts(folder)
    query = _choose(options, "query_instruction", prompts.get("query"), "", sources)
    document = _choose(
        options, "document_instruction", prompts.get("document", prompts.get("passage")), "", sources
    )
    return EmbeddingProfile(
        pooling=pooling,
        normalize=_as_bool(normalize),
        max_length=int(max_length) if max_length is not None else None,
        query_instruction=str(query),
        document_instruction=str(document),
        sources=sources,
    )


def _check_modules(folder: Path) -> None:
    """Refuse a sentence-transformers model whose vectors need modules GenAI does not run (a Dense
    projection, a LayerNorm, ...): it would load and return vectors of the wrong size or values."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return
    kinds = [str(module.get("type", "")) for module in modules if isinstance(module, dict)]
    unsupported = [kind.rsplit(".", 1)[-1] for kind in kinds if kind.rsplit(".", 1)[-1] not in _RUN_MODULES]
    if unsupported:
        raise ModelLoadError(
            f"modules.json has {', '.join(unsupported)} after pooling, which GenAI's embedding pipeline "
            "does not run (it runs the transformer, one pooling and normalisation): its vectors would be "
            "wrong, so it is not loaded"
        )


def _with_model_limit(
    profile: EmbeddingProfile, tokenizer_limit: int, positions: int | None
) -> EmbeddingProfile:
    """``profile`` with the length the model allows when the folder set none: its position table
    when that is shorter than the tokenizer's cut (the pipeline would cut there, unseen by the
    token counts). Without a known position table the profile is left as it is."""
    if positions is None or positions >= tokenizer_limit:
        return profile
    return replace(profile, max_length=positions, sources=profile.sources | {"max_length": "model config"})


def _tokenizer_limit(tokenizer: TokenizerIR) -> int:
    """Where the tokenizer cuts texts when the folder sets no max_length."""
    return tokenizer.token_counts(["a " * 100_000], 1 << 30)[0]


def _choose(
    options: dict[str, RuntimeValue], key: str, from_folder: Any, default: Any, sources: dict[str, str]
) -> Any:
    if key in options:
        sources[key] = "runtime_config"
        return options[key]
    if from_folder is not None:
        sources[key] = "model folder"
        return from_folder
    sources[key] = "default"
    return default


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _folder_pooling(folder: Path) -> str | None:
    config = _read_json(folder / "1_Pooling" / "config.json")
    if not isinstance(config, dict):
        return None
    chosen = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)]
    if len(chosen) == 1:
        return chosen[0]
    others = [flag for flag, on in config.items() if flag.startswith("pooling_mode") and on]
    raise ModelLoadError(
        f"1_Pooling/config.json asks for {', '.join(others) or 'no pooling'}; GenAI supports exactly one "
        "of cls, mean, last_token (override with runtime_config {'pooling': ...})"
    )


def _folder_normalize(folder: Path) -> bool | None:
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    return any(str(module.get("type", "")).endswith("Normalize") for module in modules)


def _folder_max_length(folder: Path) -> int | None:
    config = _read_json(folder / "sentence_bert_config.json")
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return int(value) if value is not None else None


def _folder_prompts(folder: Path) -> dict[str, str]:
    config = _read_json(folder / "config_sentence_transformers.json")
    prompts = config.get("prompts") if isinstance(config, dict) else None
    return {str(k): str(v) for k, v in prompts.items()} if isinstance(prompts, dict) else {}


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequestError(
        f"runtime_config option 'normalize' must be true or false, got {value!r}", "runtime_config"
    )


def _pipeline_config(openvino_genai: Any, profile: EmbeddingProfile) -> Any:
    pipeline = openvino_genai.TextEmbeddingPipeline
    config = pipeline.Config()
    config.pooling_type = getattr(pipeline.PoolingType, profile.pooling.upper())
    config.normalize = profile.normalize
    if profile.max_length is not None:
        config.max_length = profile.max_length
    return config
