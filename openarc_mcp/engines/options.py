"""Engine options carried in ``load_model``'s ``runtime_config`` beside OpenVINO properties."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from ..schema import RuntimeValue

__all__ = ["checked_max_length", "model_positions", "read_config", "split_options"]


def split_options(
    runtime_config: dict[str, RuntimeValue], known: Iterable[str]
) -> tuple[dict[str, RuntimeValue], dict[str, RuntimeValue]]:
    """Split into (engine options, OpenVINO properties): lower-case known keys are options.

    OpenVINO property names are upper case (``PERFORMANCE_HINT``); a lower-case key that is not a
    known option is a typo, and is refused rather than passed on and ignored.
    """
    options: dict[str, RuntimeValue] = {}
    properties: dict[str, RuntimeValue] = {}
    known_keys = set(known)
    for key, value in runtime_config.items():
        if key in known_keys:
            options[key] = value
        elif key.islower():
            raise InvalidRequestError(
                f"unknown option '{key}' in runtime_config; options of this model type: "
                f"{', '.join(sorted(known_keys)) or 'none'} (OpenVINO properties are upper case)",
                "runtime_config",
            )
        else:
            properties[key] = value
    return options, properties


def model_positions(folder: Path) -> int | None:
    """The model's position table size (``max_position_embeddings`` in config.json, or in its
    ``text_config`` for a vision-language model), if it says."""
    config = read_config(folder / "config.json")
    text_config = config.get("text_config")  # a vision-language model: its language model's table
    positions = config.get("max_position_embeddings")
    if positions is None and isinstance(text_config, dict):
        positions = text_config.get("max_position_embeddings")
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        return None
    return positions


def read_config(path: Path) -> dict[str, Any]:
    """A model folder's JSON object (config.json, generation_config.json); empty when the file is
    missing, unreadable or not an object, so that a caller falls back to its defaults."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def checked_max_length(value: object, folder: Path) -> int:
    """A ``max_length`` (tokens a text or pair is cut to): a whole number from 1 to the model's
    position table, past which the model would silently compute garbage."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(
            f"runtime_config option 'max_length' must be a whole number of at least 1, got {value!r}",
            "runtime_config",
        )
    positions = model_positions(folder)
    if positions is not None and value > positions:
        raise InvalidRequestError(
            f"max_length {value} is more than the model's {positions} positions", "runtime_config"
        )
    return value
