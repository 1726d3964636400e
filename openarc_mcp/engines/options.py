"""Engine options carried in ``load_model``'s ``runtime_config`` beside OpenVINO properties."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InvalidRequestError
from ..schema import RuntimeValue

__all__ = ["split_options"]


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
                f"{', '.join(sorted(known_keys)) or 'none'} (OpenVINO properties are upper case)"
            )
        else:
            properties[key] = value
    return options, properties
