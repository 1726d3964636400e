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
        self._callbacks: list[Callable[[], None]] | None = None
        self.reason = ""

    def set(self, reason: str) -> None:
        """Ask the engine to stop; the first reason given is kept."""
        with self._lock:
            if self._set:
                return
            self.reason = reason
            self._set = True
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (cheap, thread-safe: it runs in the setter's thread) once the flag is set,
        at once if it is already: for a waiter that sleeps until its work ends or it is stopped."""
        with self._lock:
            if not self._set:
                self._callbacks = [*(self._callbacks or ()), callback]
                return
        callback()

    def is_set(self) -> bool:
        """True once someone asked the work to stop."""
        return self._set


@runtime_checkable
class Engine(Protocol):
    """What the worker layer needs of every engine; each type adds its own inference methods."""

    def close(self) -> None:
        """Release the pipeline and its memory; called once, from a worker thread."""
