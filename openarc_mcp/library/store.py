"""The models directory: one folder per prepared model, each with a metadata file."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from ..schema import MAX_MODEL_NAME, MODEL_NAME_PATTERN, ModelType
from .signals import ending_signals_raise, interrupts_held

__all__ = [
    "METADATA_FILE",
    "LibraryModel",
    "find_model",
    "library_lock",
    "list_models",
    "model_at",
    "staged_model_dir",
    "write_metadata",
]

METADATA_FILE = "openarc-model.json"

logger = logging.getLogger(__name__)
_STAGING = ".staging-"
_REPLACED = ".replaced-"
_STALE_AFTER_S = 24 * 3600.0
_LOCK_FILE = ".lock"


class LibraryModel(BaseModel):
    """The metadata written beside a prepared model."""

    name: str
    model_type: ModelType
    source: str = Field(description="Where the weights came from (package, file or folder).")
    description: str = ""
    license: str | None = None
    weight_format: str | None = None
    pooling: str | None = Field(default=None, description="How an embedding model pools (and whence).")
    prepared_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    tool_versions: dict[str, str] = Field(default_factory=dict)
    path: Path | None = Field(default=None, exclude=True)


def list_models(models_dir: Path) -> list[LibraryModel]:
    """Every prepared model under ``models_dir``, in name order; unreadable folders are skipped."""
    if not models_dir.is_dir():
        return []
    found = (_read(folder) for folder in sorted(models_dir.iterdir()) if _model_name(folder.name))
    return [model for model in found if model is not None]


def _model_name(name: str) -> bool:
    """Whether a folder's name can be a model's (not hidden, and a valid name: a folder whose name
    is not valid UTF-8, say, could be neither loaded by name nor shown on the wire)."""
    return len(name) <= MAX_MODEL_NAME and re.fullmatch(MODEL_NAME_PATTERN, name) is not None


def find_model(models_dir: Path, name: str) -> LibraryModel | None:
    """The prepared model of that name, if there is one."""
    if len(name) > MAX_MODEL_NAME or not re.fullmatch(MODEL_NAME_PATTERN, name):
        return None  # no folder could be named so (a 5000-character name is ENAMETOOLONG, not "absent")
    folder = models_dir / name
    if not folder.is_dir():
        return None
    return _read(folder)


def model_at(folder: Path) -> LibraryModel | None:
    """The metadata of a prepared model's folder, wherever it lies (a model_path given to a load);
    ``None`` for a folder that was not prepared here or cannot be read."""
    try:
        return _read(folder) if folder.is_dir() else None
    except OSError:
        return None


def write_metadata(folder: Path, model: LibraryModel) -> None:
    """Write the metadata file of a prepared model folder."""
    text = model.model_dump_json(indent=2, exclude={"path"})
    (folder / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


@contextlib.contextmanager
def library_lock(models_dir: Path) -> Iterator[None]:
    """Hold the models directory's lock: one preparation or conversion writes into it at a time,
    across processes (two hosts running ``models prepare`` or ``demo`` at once would otherwise
    download the same wheel together and race to put the same model in place)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    with (models_dir / _LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another preparation is writing into %s; waiting for it to finish", models_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_model_dir(models_dir: Path, name: str) -> Iterator[Path]:
    """A temporary folder inside ``models_dir`` that becomes ``models_dir/name`` on success.

    On any error or interruption (Ctrl-C, SIGTERM and SIGHUP included) the folder is removed, so
    the library never holds a half-written model.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_leftovers(models_dir)
    with ending_signals_raise():  # a service stop or a closed terminal cleans up as Ctrl-C does
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{name}-", dir=models_dir))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a model folder is as readable as any other
            yield staging
            _put_in_place(staging, models_dir / name)
        finally:
            with interrupts_held():  # a second Ctrl-C waits for the removal
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)


def _put_in_place(staging: Path, target: Path) -> None:
    """Make the finished ``staging`` folder ``target``. A model already there (a folder, or a link to
    one: the link is replaced, never what it points to) is moved aside first and deleted only once
    the new one is in place, so an interruption leaves one whole model, old or new."""
    if not _present(target):
        staging.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{_REPLACED}{target.name}-", dir=target.parent))
    old = aside / "old"
    try:
        target.rename(old)
        staging.rename(target)
    except BaseException:  # Ctrl-C between the two renames included
        if _present(old) and not _present(target):
            old.rename(target)  # the old model back where it was
        raise
    finally:
        if not (_present(old) and not _present(target)):  # never the only copy of a model
            shutil.rmtree(aside, ignore_errors=True)  # removes a link inside it, not the link's target


def _present(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _remove_stale_leftovers(models_dir: Path) -> None:
    """Delete staging and replaced folders that a killed run left (untouched for a day: no live run
    is that slow); they are hidden from the library but can hold gigabytes."""
    cutoff = time.time() - _STALE_AFTER_S
    for folder in models_dir.iterdir():
        if not folder.name.startswith((_STAGING, _REPLACED)) or folder.is_symlink() or not folder.is_dir():
            continue
        with contextlib.suppress(OSError):
            if folder.stat().st_mtime < cutoff:
                logger.info("removing %s, left by an interrupted preparation", folder)
                shutil.rmtree(folder, ignore_errors=True)


def _read(folder: Path) -> LibraryModel | None:
    meta = folder / METADATA_FILE
    if not meta.is_file():
        return None
    try:
        model = LibraryModel.model_validate(json.loads(meta.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        logger.warning("ignoring %s: unreadable metadata (%s)", folder, exc)
        return None
    return model.model_copy(update={"path": folder, "name": folder.name})
