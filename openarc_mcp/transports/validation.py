"""Where pydantic's errors lie in the data as the caller wrote it (both transports name it)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

__all__ = ["telling_errors"]


def telling_errors(exc: ValidationError, data: Any) -> list[tuple[tuple[str | int, ...], ErrorDetails]]:
    """pydantic's errors of validating ``data``, each with its place in ``data`` as the caller wrote
    it (without the names of union members pydantic tried: 'str', 'list[str]', 'RerankDocument').

    A value that fits none of a union's types fails once per type; of those failures only the ones
    that got furthest into the value are kept ('texts[1] should be a valid string', not also 'texts
    should be a valid string' for the union's plain string; 'documents[0].title' is not allowed,
    not 'documents[0] should be a valid string')."""
    located = [(_Located.of(error["loc"], data, error["type"] == "missing"), error) for error in exc.errors()]
    deepest: dict[str | int, int] = {}
    for where, _ in located:
        if where.in_union:
            deepest[where.top] = max(deepest.get(where.top, 0), len(where.parts))
    return [
        (where.parts, error)
        for where, error in located
        if not where.in_union or len(where.parts) == deepest[where.top]
    ]


class _Located:
    """Where in the data an error lies: pydantic's location without union members' names."""

    def __init__(self, parts: tuple[str | int, ...], in_union: bool) -> None:
        self.parts, self.in_union = parts, in_union
        self.top: str | int = parts[0] if parts else ""

    @classmethod
    def of(cls, loc: tuple[int | str, ...], data: Any, missing: bool) -> _Located:
        parts: list[str | int] = []
        in_union, value = False, data
        for index, part in enumerate(loc):
            if _holds(value, part):
                value = value[part]
            elif missing and index == len(loc) - 1 and isinstance(value, dict):  # named, not there
                value = None
            else:
                in_union = True  # a union member's name: pydantic's, not the caller's
                continue
            parts.append(part)
        return cls(tuple(parts), in_union)


def _holds(value: Any, part: str | int) -> bool:
    """Whether ``value`` has ``part`` (a key of an object, an index of a list)."""
    if isinstance(value, dict):
        return part in value
    return isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value)
