"""One request waiting for, or running on, a model worker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio

from ..engines.base import StopFlag, TextSink

__all__ = ["AllStopped", "BatchPart", "Job", "Stopped", "Work"]

T = TypeVar("T")

Work = Callable[[Any, StopFlag, TextSink], T]
"""What a job runs in a worker thread: ``work(engine, stop_flag, text_sink) -> result``."""


@dataclass(frozen=True)
class BatchPart:
    """Marks a job that may share one engine call with queued jobs of the same ``key``.

    ``run(engine, items_of_each_job, stop)`` returns one result per job, in order; it runs in a
    worker thread, and ``stop`` is set once every job of the batch is stopped. Jobs with equal keys
    must have the same ``run``.
    """

    key: Hashable
    items: Sequence[Any]
    run: Callable[[Any, list[Sequence[Any]], StopFlag], list[Any]]


class AllStopped(StopFlag):
    """Set when every one of a batch's jobs is stopped (their callers left, or an unload)."""

    def __init__(self, jobs: list[Job[Any]]) -> None:
        super().__init__()
        self._jobs = jobs

    def is_set(self) -> bool:
        """True once no job of the batch still wants its result."""
        return all(job.stop.is_set() for job in self._jobs)


class _Unset:
    pass


_UNSET = _Unset()


class Job(Generic[T]):
    """A request's work, its outcome, and the text it has streamed so far."""

    def __init__(self, work: Work[T], batch: BatchPart | None = None) -> None:
        self.work = work
        self.batch = batch
        self.stop = StopFlag()
        self.done = anyio.Event()
        self._result: T | _Unset = _UNSET
        self._error: BaseException | None = None
        self._text_lock = threading.Lock()
        self._pending_text: list[str] = []
        self._streamed = 0
        self._nudge: Callable[[], None] | None = None

    def run(self, engine: Any) -> T:
        """Run the work on the calling (worker) thread, unless it was stopped while waiting."""
        if self.stop.is_set():
            raise Stopped(self.stop.reason)
        return self.work(engine, self.stop, self._emit)

    def nudge_on_news(self, nudge: Callable[[], None] | None) -> None:
        """Call ``nudge`` when the first text arrives (on the thread that streams it) and when the
        job is done; it must be safe to call from any thread. ``None`` stops it."""
        self._nudge = nudge

    def succeed(self, result: T) -> None:
        """Record the result and wake the requester (event loop only)."""
        if not self.done.is_set():
            self._result = result
            self.done.set()
            self._send_nudge()

    def fail(self, error: BaseException) -> None:
        """Record the error and wake the requester (event loop only)."""
        if not self.done.is_set():
            self._error = error
            self.done.set()
            self._send_nudge()

    def outcome(self) -> T:
        """The result, or raise the recorded error."""
        if self._error is not None:
            raise self._error
        assert not isinstance(self._result, _Unset), "outcome() before the job was done"
        return self._result

    def take_text(self) -> tuple[str, int]:
        """Text streamed since the last call, and the count of pieces streamed in all."""
        with self._text_lock:
            text = "".join(self._pending_text)
            self._pending_text.clear()
            return text, self._streamed

    def _emit(self, text: str) -> None:
        with self._text_lock:
            self._pending_text.append(text)
            self._streamed += 1
            first = self._streamed == 1
        if first:
            self._send_nudge()

    def _send_nudge(self) -> None:
        nudge = self._nudge
        if nudge is not None:
            nudge()


class Stopped(Exception):
    """Raised in the worker thread for a job stopped before its engine call began."""
