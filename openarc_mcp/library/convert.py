"""``models convert``: your Hugging Face checkpoints and GGUF files into the model library.

A checkpoint folder is exported with optimum-intel's Python API (``export.export_checkpoint``, the
same code the catalogue uses), a ``.gguf`` file with GenAI's own GGUF reader. The model is written
to a staging folder and moved into place at the end, so a failure or Ctrl-C leaves nothing.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, cast, get_args

from ..errors import CatalogueError, short_reason
from ..schema import MAX_MODEL_NAME, MODEL_NAME_PATTERN, ModelType
from .build_process import run_build
from .export import (
    EXPORT_TASKS,
    ExportOptions,
    WeightFormat,
    check_weight_flags,
    export_checkpoint,
    require_convert_extra,
)
from .store import LibraryModel, find_model, library_lock, staged_model_dir, write_metadata

__all__ = ["ConvertRequest", "convert_gguf", "convert_model", "tool_versions"]

logger = logging.getLogger(__name__)

# architectures optimum-intel 2.2 cannot export under transformers 5.x, and what they need
_NEEDS_OLDER_TRANSFORMERS = {
    "qwen2_vl": "transformers <= 5.0",
    "qwen2_5_vl": "transformers <= 5.0",
}
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
_DISK_FACTOR = 2.5  # free space needed, as a multiple of the source weights (export + staging)
_LICENSE_LINE = re.compile(r"^license:\s*(?P<license>\S.*)$", re.MULTILINE)


@dataclass(frozen=True)
class ConvertRequest:
    """What to convert, into which model type and name, with which weights."""

    source: Path
    model_type: ModelType
    name: str | None = None
    weight_format: str | None = None
    group_size: int | None = None
    sym: bool = False
    trust_remote_code: bool = False
    force: bool = False


def convert_model(request: ConvertRequest, models_dir: Path) -> LibraryModel:
    """Convert ``request.source`` into ``models_dir/<name>`` and return its library record."""
    source = request.source.expanduser().resolve()
    if request.group_size is not None and request.group_size < 1:
        raise CatalogueError(f"--group-size must be at least 1, got {request.group_size}")
    if not (source.is_file() and source.suffix.lower() == ".gguf"):  # GGUF keeps its own quantization
        check_weight_flags(_weight_format(request.weight_format), request.group_size, request.sym)
    name = request.name or _default_name(source)
    _check_name(name, models_dir, request.force)
    _check_not_inside(source, models_dir / name)
    with library_lock(models_dir):  # one writer at a time; the name checked again once it is ours
        _check_name(name, models_dir, request.force)
        if source.is_file() and source.suffix.lower() == ".gguf":
            return _convert_gguf_file(source, name, request, models_dir)
        return _convert_checkpoint(source, name, request, models_dir)


def _convert_checkpoint(source: Path, name: str, request: ConvertRequest, models_dir: Path) -> LibraryModel:
    config = _checkpoint_config(source)
    _check_type(config, request.model_type, source)
    require_convert_extra()
    _check_disk(source, models_dir)
    options = ExportOptions(
        weight_format=_weight_format(request.weight_format),
        group_size=request.group_size,
        sym=request.sym,
        trust_remote_code=request.trust_remote_code,
    )
    started = time.perf_counter()
    logger.info(
        "%s: exporting %s (%s) as %s with optimum-intel, %s weights; this can take minutes",
        name, source, _architecture(config), request.model_type, options.weight_format,
    )  # fmt: skip
    with staged_model_dir(models_dir, name) as staging:
        run_build(name, models_dir, export_checkpoint, source, staging, request.model_type, options)
        logger.info("%s: writing metadata", name)
        write_metadata(staging, _metadata(name, request.model_type, source, options.weight_format, staging))
    return _finished(models_dir, name, started)


def convert_gguf(gguf: Path, output: Path) -> None:
    """A GGUF LLM → OpenVINO IR beside it in ``output``, by GenAI's own GGUF reader (no torch)."""
    import openvino_genai

    target = output / gguf.name
    if gguf.parent != output:
        shutil.copyfile(gguf, target)
    try:
        pipeline = openvino_genai.LLMPipeline(str(target), "CPU", enable_save_ov_model=True)
    except Exception as exc:  # GenAI raises RuntimeError for unsupported architectures or types
        raise CatalogueError(f"GenAI cannot read {gguf.name}: {short_reason(exc, lines=1)}") from exc
    del pipeline
    target.unlink()
    if not (output / "openvino_model.xml").exists():
        raise CatalogueError(f"GenAI read {gguf.name} but wrote no OpenVINO model")


def _convert_gguf_file(source: Path, name: str, request: ConvertRequest, models_dir: Path) -> LibraryModel:
    if request.model_type is not ModelType.LLM:
        raise CatalogueError(
            f"a .gguf file is an LLM; convert it with --type llm, not '{request.model_type}'"
        )
    if request.weight_format or request.group_size is not None or request.sym:
        raise CatalogueError(
            "a GGUF file keeps its own quantization: drop --weight-format, --group-size, --sym"
        )
    if request.trust_remote_code:
        raise CatalogueError("a GGUF file runs no checkpoint code: drop --trust-remote-code")
    _check_disk(source, models_dir)
    started = time.perf_counter()
    logger.info("%s: converting %s with GenAI's GGUF reader", name, source)
    with staged_model_dir(models_dir, name) as staging:
        run_build(name, models_dir, convert_gguf, source, staging)
        write_metadata(staging, _metadata(name, ModelType.LLM, source, _gguf_format(source), staging))
    return _finished(models_dir, name, started)


def _finished(models_dir: Path, name: str, started: float) -> LibraryModel:
    model = find_model(models_dir, name)
    if model is None:
        raise CatalogueError(f"{name}: conversion finished but the model folder is unreadable")
    logger.info("%s: converted in %.1f s into %s", name, time.perf_counter() - started, model.path)
    return model


def _default_name(source: Path) -> str:
    stem = source.stem if source.is_file() else source.name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._").lower()
    return cleaned or "model"


def _check_not_inside(source: Path, target: Path) -> None:
    """A model replaced by its conversion is deleted once the new one is in place: never the source."""
    target = target.resolve()
    if source == target or source.is_relative_to(target):
        raise CatalogueError(
            f"{source} is where the converted model would go, and replacing it would delete the source; "
            "move the checkpoint out of the models directory, or choose another --name"
        )


def _check_name(name: str, models_dir: Path, force: bool) -> None:
    if not re.fullmatch(MODEL_NAME_PATTERN, name) or len(name) > MAX_MODEL_NAME:
        raise CatalogueError(f"'{name}' is not a valid model name: letters, digits, '.', '_', ':' and '-'")
    if (models_dir / name).exists() and not force:
        raise CatalogueError(
            f"a model named '{name}' is already in {models_dir}; choose another --name, pass --force to "
            f"replace it, or remove it with 'openarc-mcp models remove {name}'"
        )


def _checkpoint_config(source: Path) -> dict[str, Any]:
    if not source.exists():
        raise CatalogueError(f"{source} does not exist")
    if source.is_file():
        raise CatalogueError(f"{source} is a file; give a Hugging Face checkpoint folder, or a .gguf file")
    config_file = source / "config.json"
    if not config_file.is_file():
        raise CatalogueError(
            f"{source} is not a Hugging Face checkpoint: it has no config.json (give the folder that holds "
            "config.json, the weights and the tokenizer files)"
        )
    if not any(any(source.glob(pattern)) for pattern in _WEIGHT_FILES):
        raise CatalogueError(f"{source} has a config.json but no weights (*.safetensors or *.bin)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"cannot read {config_file}: {exc}") from exc
    if not isinstance(config, dict):
        raise CatalogueError(f"{config_file} is not a JSON object")
    return config


def _check_type(config: dict[str, Any], wanted: ModelType, source: Path) -> None:
    if wanted not in EXPORT_TASKS:
        raise CatalogueError(
            f"converting '{wanted}' checkpoints is not supported: the served TTS model is Kokoro, which "
            "'openarc-mcp models prepare kokoro-82m' builds from its ONNX release"
        )
    model_type = str(config.get("model_type", ""))
    constraint = _NEEDS_OLDER_TRANSFORMERS.get(model_type)
    if constraint:
        raise CatalogueError(
            f"optimum-intel {_version('optimum-intel')} cannot export '{model_type}' under transformers "
            f"{_version('transformers')}: it needs {constraint}. Export it in an environment with "
            f"{constraint} (optimum-cli export openvino --task {EXPORT_TASKS[wanted]}) and load the folder "
            "with load_model"
        )
    found = _kind_of(config)
    compatible = {found} | ({ModelType.EMBEDDING} if found is ModelType.LLM else set())
    if found is not None and wanted not in compatible:
        raise CatalogueError(
            f"{source} holds a {_architecture(config)} checkpoint, which is a '{found}' model, not "
            f"'{wanted}'; convert it with --type {found}"
        )


def _kind_of(config: dict[str, Any]) -> ModelType | None:
    """What the checkpoint's config says the model is, when it says it clearly."""
    architectures = [str(a) for a in config.get("architectures") or []]
    if config.get("model_type") == "whisper":
        return ModelType.WHISPER
    if "vision_config" in config:
        return ModelType.VLM
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return ModelType.RERANKER
    if any(a.endswith("ForCausalLM") for a in architectures):
        return ModelType.LLM
    if any(a.endswith(("Model", "ForMaskedLM")) for a in architectures):
        return ModelType.EMBEDDING
    return None


def _architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    return str(architectures[0]) if architectures else str(config.get("model_type", "unknown"))


def _check_disk(source: Path, models_dir: Path) -> None:
    files = [source] if source.is_file() else [f for p in _WEIGHT_FILES for f in source.rglob(p)]
    needed = int(sum(f.stat().st_size for f in files) * _DISK_FACTOR)
    probe = models_dir if models_dir.exists() else next(p for p in models_dir.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise CatalogueError(
            f"not enough disk space in {models_dir}: converting needs about {needed / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB are free"
        )


def _weight_format(value: str | None) -> WeightFormat:
    allowed = get_args(WeightFormat)
    if value is None:
        return "fp16"
    if value not in allowed:
        raise CatalogueError(f"--weight-format must be one of {', '.join(allowed)}, not '{value}'")
    return cast(WeightFormat, value)


def _gguf_format(source: Path) -> str:
    match = re.search(r"(Q\d_[A-Z0-9_]+|Q\d|F16|F32|BF16)", source.name, re.IGNORECASE)
    return f"gguf-{match.group(1).lower()}" if match else "gguf"


def _metadata(
    name: str, model_type: ModelType, source: Path, weight_format: str, folder: Path
) -> LibraryModel:
    return LibraryModel(
        name=name,
        model_type=model_type,
        source=str(source),
        description=f"converted by openarc-mcp from {source.name}",
        license=_license(source),
        weight_format=weight_format,
        pooling=_pooling(folder) if model_type is ModelType.EMBEDDING else None,
        prepared_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tool_versions=tool_versions(),
    )


def _license(source: Path) -> str | None:
    """The licence a checkpoint's model card declares in its front matter, if any."""
    card = source / "README.md" if source.is_dir() else None
    if card is None or not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text[3 : text.find("\n---", 3)]
    match = _LICENSE_LINE.search(front)
    return match.group("license").strip().strip("'\"") if match else None


def _pooling(folder: Path) -> str:
    from ..engines.embedding import read_profile

    profile = read_profile(folder, {})
    return f"{profile.pooling} ({profile.sources['pooling']})"


def tool_versions() -> dict[str, str]:
    """Versions of the tools that wrote a model folder."""
    names = (
        "openarc-mcp",
        "openvino",
        "openvino-genai",
        "openvino-tokenizers",
        "optimum-intel",
        "transformers",
    )
    versions = {name: _version(name) for name in names}
    return {name: version for name, version in versions.items() if version != "not installed"}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
