"""``models list``: the catalogue and the prepared models, as rows and as a table."""

from __future__ import annotations

from pathlib import Path

from .catalogue import CATALOGUE
from .store import list_models

__all__ = ["library_rows", "render_table"]

_COLUMNS = ("name", "type", "state", "size", "format", "source")


def library_rows(models_dir: Path) -> list[dict[str, str]]:
    """One row per prepared model, then one per catalogue entry not prepared yet."""
    rows: dict[str, dict[str, str]] = {}
    for model in list_models(models_dir):
        size = _folder_size(model.path) if model.path else 0
        rows[model.name] = {
            "name": model.name,
            "type": str(model.model_type),
            "state": "prepared",
            "size": _human_size(size),
            "format": model.weight_format or "",
            "source": model.source,
            "path": str(model.path),
        }
    for name, entry in CATALOGUE.items():
        rows.setdefault(
            name,
            {
                "name": name,
                "type": str(entry.model_type),
                "state": "not prepared",
                "size": "",
                "format": "",
                "source": entry.source,
                "path": "",
            },
        )
    return [rows[name] for name in sorted(rows)]


def render_table(rows: list[dict[str, str]]) -> str:
    """Rows as an aligned text table."""
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in _COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in _COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in _COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
