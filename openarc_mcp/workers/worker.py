"""A model worker: a bounded queue in front of one engine, drained by one anyio task.

Every job accepted by ``call`` is answered: with its result, with the engine's error (the model
stays loaded), with ``ModelUnloadedError`` when the model goes away first, or with
``RequestTimeoutError`` at its deadline. Engine calls run in threads under the device's limiter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio import CapacityLimiter

from ..errors import EngineFault, ModelUnloadedError, RequestTimeoutError, ServerBusyError, UserError
from .job import Job, Work

__all__ = ["ModelWorker", "ProgressSink", "Work"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ProgressSink = Callable[[str, int], Awaitable[None]]
"""Receives ``(new_text, pieces_so_far)`` while a job streams; called on the event loop."""


class ModelWorker:
    """Serializes requests for one model and runs them off the event loop."""

    def __init__(self, name: str, engine: Any, limiter: CapacityLimiter, queue_depth: int) -> None:
        self.name = name
        self.engine = engine
        self._limiter = limiter
        self._send, self._receive = anyio.create_memory_object_stream[Job[Any]](max_buffer_size=queue_depth)
        self._current: Job[Any] | None = None
        self._closing = False
        self._finished = anyio.Event()
        self.cancelled = 0
        """Requests whose caller went away (cancelled) while they ran or waited."""

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (not counting the one running)."""
        return self._send.statistics().current_buffer_used

    async def serve(self) -> None:
        """Drain the queue until ``close``; run this in the application's task group."""
        try:
            async with self._receive:
                async for job in self._receive:
                    await self._execute(job)
        finally:
            self._finished.set()

    async def call(
        self,
        work: Work[T],
        time_limit: float,
        on_progress: ProgressSink | None = None,
        progress_interval: float = 0.05,
    ) -> T:
        """Queue ``work`` and wait for its outcome, streaming text to ``on_progress``."""
        job: Job[T] = Job(work, anyio.current_time() + time_limit)
        self._enqueue(job)
        try:
            with anyio.move_on_after(time_limit):
                await _wait(job, on_progress, progress_interval)
            if not job.done.is_set():
                job.stop.set("deadline")
                raise RequestTimeoutError(
                    f"model '{self.name}' did not finish the request within {time_limit:g} s; "
                    "ask for less (e.g. fewer max_tokens) or raise the server's request_timeout"
                )
            return job.outcome()
        finally:
            if not job.done.is_set():
                job.stop.set("abandoned")  # cancelled by the client: stop decoding now

    async def close(self, time_limit: float) -> None:
        """Stop accepting, fail queued jobs, stop the running one, wait for the loop to end."""
        self._closing = True
        self._send.close()
        if self._current is not None:
            self._current.stop.set("unloaded")
        with anyio.move_on_after(time_limit):
            await self._finished.wait()

    def _enqueue(self, job: Job[Any]) -> None:
        if self._closing:
            raise ModelUnloadedError(f"model '{self.name}' is being unloaded; load it again to use it")
        try:
            self._send.send_nowait(job)
        except anyio.WouldBlock:
            raise ServerBusyError(
                f"model '{self.name}' is busy: {self.queued} requests are already waiting; retry shortly"
            ) from None

    async def _execute(self, job: Job[Any]) -> None:
        if self._closing:
            job.fail(ModelUnloadedError(f"model '{self.name}' was unloaded before this request ran"))
            return
        if job.stop.is_set() or anyio.current_time() >= job.deadline:
            self._count_cancelled(job)
            job.fail(RequestTimeoutError(f"request for model '{self.name}' was dropped: {job.stop.reason}"))
            return
        self._current = job
        try:
            result = await anyio.to_thread.run_sync(job.run, self.engine, limiter=self._limiter)
        except UserError as exc:
            job.fail(exc)
        except Exception as exc:
            logger.exception("engine of model '%s' failed on a request", self.name)
            job.fail(EngineFault(f"model '{self.name}' failed on this request: {type(exc).__name__}"))
        else:
            self._finish(job, result)
        finally:
            self._current = None
            self._count_cancelled(job)

    def _count_cancelled(self, job: Job[Any]) -> None:
        if job.stop.reason == "abandoned":
            self.cancelled += 1

    def _finish(self, job: Job[Any], result: Any) -> None:
        if self._closing and job.stop.reason == "unloaded":
            job.fail(ModelUnloadedError(f"model '{self.name}' was unloaded while this request ran"))
        else:
            job.succeed(result)


async def _wait(job: Job[Any], on_progress: ProgressSink | None, interval: float) -> None:
    """Wait for the job; meanwhile forward streamed text every ``interval`` seconds."""
    if on_progress is None:
        await job.done.wait()
        return
    while not job.done.is_set():
        with anyio.move_on_after(interval if math.isfinite(interval) else 1.0):
            await job.done.wait()
        text, pieces = job.take_text()
        if text:
            await on_progress(text, pieces)
