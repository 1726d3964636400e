"""The ``Engine`` protocol and the small types every engine shares."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Engine", "StopFlag", "TextSink"]

TextSink = Callable[[str], None]
"""Receives each piece of generated text, on the engine's thread, as it is produced."""


class StopFlag:
    """A thread-safe flag an engine polls to stop work early (cancellation, unload, deadline).

    Engines poll it and nobody waits on it, so it is a lock and a boolean rather than a
    ``threading.Event`` (whose condition variable costs more to make than the rest of a job).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self.reason = ""

    def set(self, reason: str) -> None:
        """Ask the engine to stop; the first reason given is kept."""
        with self._lock:
            if not self._set:
                self.reason = reason
                self._set = True

    def is_set(self) -> bool:
        """True once someone asked the work to stop."""
        return self._set


@runtime_checkable
class Engine(Protocol):
    """What the worker layer needs of every engine; each type adds its own inference methods."""

    def close(self) -> None:
        """Release the pipeline and its memory; called once, from a worker thread."""
