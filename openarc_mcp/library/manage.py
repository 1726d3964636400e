"""``models remove`` and ``models inspect``: look after what is in the models directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import CatalogueError
from .store import find_model

__all__ = ["inspect_model", "remove_model"]


def remove_model(models_dir: Path, name: str) -> Path:
    """Delete one model folder of the library; never anything outside ``models_dir``."""
    folder = _library_folder(models_dir, name)
    if folder.is_symlink():
        folder.unlink()  # a linked model: drop the link, never the folder it points at
    else:
        shutil.rmtree(folder)
    return folder


def inspect_model(models_dir: Path, name: str) -> dict[str, Any]:
    """Metadata, files and each OpenVINO graph's inputs and outputs."""
    folder = _library_folder(models_dir, name)
    model = find_model(models_dir, name)
    import openvino
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations: their graphs read too)

    core = openvino.Core()
    graphs = {xml.name: _ports(core.read_model(str(xml))) for xml in sorted(folder.glob("*.xml"))}
    return {
        "metadata": model.model_dump(mode="json") if model else None,
        "path": str(folder),
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
        "graphs": graphs,
    }


def _library_folder(models_dir: Path, name: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..", "."):
        raise CatalogueError(f"'{name}' is not a model name in the library")
    folder = models_dir / name
    if find_model(models_dir, name) is None:
        raise CatalogueError(
            f"no model named '{name}' in {models_dir}; 'openarc-mcp models list' shows what is there"
        )
    if folder.resolve().parent != models_dir.resolve() and not folder.is_symlink():
        raise CatalogueError(f"'{name}' is not inside {models_dir}")
    return folder


def _ports(model: Any) -> dict[str, list[dict[str, str]]]:
    def describe(port: Any) -> dict[str, str]:
        names = sorted(port.get_names())
        return {
            "name": names[0] if names else port.get_any_name(),
            "type": str(port.get_element_type().get_type_name()),
            "shape": str(port.get_partial_shape()),
        }

    return {"inputs": [describe(p) for p in model.inputs], "outputs": [describe(p) for p in model.outputs]}
