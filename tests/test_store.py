"""Replacing a prepared model folder: whole models only, links replaced rather than followed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from openarc_mcp.library.store import staged_model_dir


def test_a_model_that_is_a_link_is_replaced_not_deleted_through(tmp_path: Path) -> None:
    models_dir, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_text("the user's own copy")
    models_dir.mkdir()
    (models_dir / "mine").symlink_to(elsewhere, target_is_directory=True)
    with staged_model_dir(models_dir, "mine") as staging:
        (staging / "weights.bin").write_text("converted")
    assert not (models_dir / "mine").is_symlink()
    assert (models_dir / "mine" / "weights.bin").read_text() == "converted"
    assert (elsewhere / "weights.bin").read_text() == "the user's own copy"  # the link's target is kept
    assert sorted(p.name for p in models_dir.iterdir()) == ["mine"]  # nothing left aside


def test_a_replaced_model_is_whole_old_or_whole_new(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    with staged_model_dir(models_dir, "m") as staging:
        (staging / "weights.bin").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_model_dir(models_dir, "m") as staging:
        (staging / "weights.bin").write_text("half")
        raise KeyboardInterrupt
    assert (models_dir / "m" / "weights.bin").read_text() == "old"
    with staged_model_dir(models_dir, "m") as staging:
        (staging / "weights.bin").write_text("new")
    assert (models_dir / "m" / "weights.bin").read_text() == "new"
    assert sorted(p.name for p in models_dir.iterdir()) == ["m"]


def test_leftovers_of_killed_runs_are_removed_once_stale(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    stale, fresh = models_dir / ".staging-big-abc", models_dir / ".staging-other-def"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "openvino_model.bin").write_text("gigabytes")
    day_old = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_old, day_old))
    with staged_model_dir(models_dir, "next") as staging:
        (staging / "weights.bin").write_text("x")
    assert not stale.exists()
    assert fresh.exists()  # it may be a run still going


def test_an_interruption_between_the_renames_puts_the_old_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models_dir = tmp_path / "models"
    with staged_model_dir(models_dir, "m") as staging:
        (staging / "weights.bin").write_text("old")
    rename = Path.rename

    def interrupted(self: Path, target: Path) -> Path:
        if self.name.startswith(".staging-"):
            raise KeyboardInterrupt  # Ctrl-C once the old model is aside, before the new is in place
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt), staged_model_dir(models_dir, "m") as staging:
        (staging / "weights.bin").write_text("new")
    monkeypatch.undo()
    assert (models_dir / "m" / "weights.bin").read_text() == "old"
    assert sorted(p.name for p in models_dir.iterdir()) == ["m"]
