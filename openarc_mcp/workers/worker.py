"""A model worker: a bounded queue in front of one engine, drained by one anyio task.

Every job accepted by ``call`` is answered: with its result, with the engine's error (the model
stays loaded), with ``ModelUnloadedError`` when the model goes away first, or with
``RequestTimeoutError`` at its deadline. A caller that goes away takes its job out of the queue
(or stops it, if it runs). Engine calls run in threads under the device's limiter, one at a time;
an engine that batches continuously (its ``concurrency`` above 1) gets that many jobs at once,
each waiting in its own thread while the engine's stepping thread decodes them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio import CapacityLimiter

from ..engines.base import Engine
from ..errors import EngineFault, ModelUnloadedError, RequestTimeoutError, ServerBusyError, UserError
from .job import AllStopped, BatchPart, Job, Stopped, Work

__all__ = ["BatchPart", "BatchSettings", "ModelWorker", "ProgressSink", "Work"]

logger = logging.getLogger(__name__)
_FIRST_TEXT_POLL = 0.002
"""Seconds between looks for the first streamed text where no thread can wake the loop (off
asyncio); on asyncio the first text wakes the waiter itself."""

T = TypeVar("T")

ProgressSink = Callable[[str, int], Awaitable[None]]
"""Receives ``(new_text, pieces_so_far)`` while a job streams; called on the event loop."""


@dataclass(frozen=True)
class BatchSettings:
    """How far a worker goes to coalesce batchable jobs into one engine call."""

    max_items: int = 64
    max_wait: float = 0.002
    """Seconds a forming batch waits for the next request; each that joins restarts the wait."""
    stretch: float = 10.0
    """The longest a batch forms, in multiples of ``max_wait``."""
    overlap_memory: float = 1.0
    """Seconds after requests last overlapped (one arrived while another waited or ran) during
    which a lone request still waits for company; after that quiet, a lone request runs at once."""


@dataclass
class BatchStats:
    """Coalescing so far: engine calls that served several requests, and their sizes."""

    batches: int = 0
    requests: int = 0
    items: int = 0
    largest: int = 0

    def add(self, requests: int, items: int) -> None:
        """Count one coalesced engine call."""
        self.batches += 1
        self.requests += requests
        self.items += items
        self.largest = max(self.largest, items)


class ModelWorker:
    """Serializes requests for one model and runs them off the event loop."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        limiter: CapacityLimiter,
        queue_depth: int,
        batching: BatchSettings | None = None,
    ) -> None:
        self.name = name
        self.engine = engine
        self.concurrency = _engine_concurrency(engine)
        # A batching engine's jobs only wait on its stepping thread: they need no device token.
        self._limiter = limiter if self.concurrency == 1 else CapacityLimiter(self.concurrency)
        self._slot_freed = anyio.Event()
        self._depth = queue_depth
        self._batching = batching or BatchSettings()
        self._queue: deque[Job[Any]] = deque()
        self._wakeup = anyio.Event()
        self._running: list[Job[Any]] = []
        self._overlapped_at = -float("inf")
        """When a request last arrived while another was queued, gathering or running."""
        self._closing = False
        self._finished = anyio.Event()
        self.cancelled = 0
        """Requests whose caller went away (cancelled) while they ran or waited."""
        self.batch_stats = BatchStats()

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (not counting those running)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Requests the engine is working on now."""
        return len(self._running)

    async def serve(self) -> None:
        """Run queued jobs until ``close``; run this in the application's task group."""
        try:
            if self.concurrency > 1:
                await self._serve_concurrently()
                return
            while job := await self._next_job():
                if job.batch is None or self._batching.max_items <= 1:
                    await self._execute(job)
                else:
                    await self._execute_batch(await self._gather(job))
        finally:
            self._finished.set()

    async def _serve_concurrently(self) -> None:
        """Start up to ``concurrency`` jobs at once; wait for the running ones before returning."""
        async with anyio.create_task_group() as jobs:
            while True:
                while len(self._running) >= self.concurrency and not self._closing:
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                job = await self._next_job()
                if job is None:
                    return
                self._running.append(job)  # counted before its task starts
                jobs.start_soon(self._execute, job)

    async def call(
        self,
        work: Work[T],
        time_limit: float,
        on_progress: ProgressSink | None = None,
        progress_interval: float = 0.1,
        batch: BatchPart | None = None,
    ) -> T:
        """Queue ``work`` and wait for its outcome, streaming text to ``on_progress``.

        With ``batch``, the job may instead run inside one engine call with other queued jobs of
        the same key (``work`` runs it alone when it cannot share).
        """
        job: Job[T] = Job(work, batch)
        self._enqueue(job)
        try:
            with anyio.move_on_after(time_limit):
                await _wait(job, on_progress, progress_interval)
            if not job.done.is_set():
                self._abandon(job, "deadline")
                raise RequestTimeoutError(
                    f"model '{self.name}' did not finish the request within {time_limit:g} s; "
                    "ask for less (e.g. fewer max_tokens) or raise the server's request_timeout"
                )
            return job.outcome()
        finally:
            if not job.done.is_set() and not job.stop.is_set():
                self._abandon(job, "abandoned")  # the caller cancelled

    async def close(self, time_limit: float) -> None:
        """Stop accepting, fail queued jobs now, stop the running one, wait for the loop to end."""
        self._closing = True
        while self._queue:
            self._queue.popleft().fail(
                ModelUnloadedError(f"model '{self.name}' was unloaded before this request ran")
            )
        for job in self._running:
            job.stop.set("unloaded")
        self._wakeup.set()
        self._slot_freed.set()
        with anyio.move_on_after(time_limit):
            await self._finished.wait()

    def _enqueue(self, job: Job[Any]) -> None:
        if self._closing or self._finished.is_set():
            raise ModelUnloadedError(f"model '{self.name}' is being unloaded; load it again to use it")
        if len(self._queue) >= self._depth:
            raise ServerBusyError(
                f"model '{self.name}' is busy: {len(self._queue)} requests are already waiting; retry shortly"
            )
        if self._queue or self._running:
            self._overlapped_at = anyio.current_time()
        self._queue.append(job)
        self._wakeup.set()

    def _abandon(self, job: Job[Any], reason: str) -> None:
        """The caller left (cancelled or timed out): drop the job if queued, stop it if running."""
        job.stop.set(reason)
        if reason == "abandoned":
            self.cancelled += 1
        if job in self._queue:
            self._queue.remove(job)
            job.fail(RequestTimeoutError("the caller went away"))

    async def _next_job(self) -> Job[Any] | None:
        while not self._queue:
            if self._closing:
                return None
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return None if self._closing else self._queue.popleft()

    async def _gather(self, first: Job[Any]) -> list[Job[Any]]:
        """``first`` and queued jobs of its batch key, waiting briefly for more to arrive.

        The wait restarts whenever a job joins (a burst still arriving is gathered whole rather
        than split into a small batch that computes while the rest is parsed), and ends after
        ``max_wait`` without a newcomer, when the batch is full, or at ``stretch`` times ``max_wait``.
        A lone job on a model whose requests have not overlapped lately does not wait: nobody is
        likely to join it (a caller embedding one text at a time would pay the wait every call).
        """
        assert first.batch is not None
        jobs, size = [first], len(first.batch.items)
        self._running = jobs  # an unload reaches gathered jobs too (the list is replaced, not shared)
        started = anyio.current_time()
        size = self._take_companions(first.batch.key, jobs, size)
        if len(jobs) == 1 and not self._overlapping(started):
            return jobs
        latest = started + self._batching.max_wait * self._batching.stretch
        deadline = started + self._batching.max_wait
        while True:
            grown = self._take_companions(first.batch.key, jobs, size)
            if grown > size:
                deadline = min(anyio.current_time() + self._batching.max_wait, latest)
            size = grown
            remaining = deadline - anyio.current_time()
            if size >= self._batching.max_items or remaining <= 0 or self._closing:
                return jobs
            with anyio.move_on_after(remaining):
                self._wakeup = anyio.Event()
                await self._wakeup.wait()

    def _overlapping(self, now: float) -> bool:
        """Whether requests overlapped within the last ``overlap_memory`` seconds."""
        return now - self._overlapped_at <= self._batching.overlap_memory

    def _take_companions(self, key: object, jobs: list[Job[Any]], size: int) -> int:
        for job in list(self._queue):
            items = len(job.batch.items) if job.batch is not None and job.batch.key == key else None
            if items is not None and size + items <= self._batching.max_items:
                self._queue.remove(job)
                jobs.append(job)
                size += items
        return size

    async def _execute_batch(self, jobs: list[Job[Any]]) -> None:
        self._running = []
        live = [job for job in jobs if not job.stop.is_set()]
        for job in jobs:  # stopped while gathered (an unload, a caller gone): answered, not dropped
            if job.stop.is_set() and not job.done.is_set():
                job.fail(self._stopped_error(job))
        if len(live) <= 1:
            for job in live:
                await self._execute(job)
            return
        run = live[0].batch.run if live[0].batch is not None else None
        assert run is not None
        parts = [job.batch.items for job in live if job.batch is not None]
        self._running = list(live)
        try:
            results: list[Any] | None = await anyio.to_thread.run_sync(
                run, self.engine, parts, AllStopped(live), limiter=self._limiter, abandon_on_cancel=True
            )
            if results is not None and len(results) != len(live):
                raise RuntimeError(f"a batch of {len(live)} requests gave {len(results)} results")
        except anyio.get_cancelled_exc_class():  # the application is shutting down
            for job in live:
                self._answer_at_shutdown(job)
            raise
        except Exception:
            message = "a batch of %d requests failed on '%s'; running them one by one"
            logger.warning(message, len(live), self.name, exc_info=True)
            results = None
        finally:
            self._running = []
        if results is None:
            for job in live:
                await self._execute(job)
            return
        self.batch_stats.add(len(live), sum(len(part) for part in parts))
        for job, result in zip(live, results, strict=True):
            self._settle(job, result)

    def _settle(self, job: Job[Any], result: Any) -> None:
        if job.stop.reason == "unloaded":
            job.fail(self._stopped_error(job))
        else:
            job.succeed(result)

    async def _execute(self, job: Job[Any]) -> None:
        if self._closing:
            job.stop.set("unloaded")
        if job not in self._running:
            self._running.append(job)
        try:
            # Cancelled only when the application shuts down: then nobody waits for the thread.
            result = await anyio.to_thread.run_sync(
                job.run, self.engine, limiter=self._limiter, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():  # the application is shutting down: answer, then go
            self._answer_at_shutdown(job)
            raise
        except Stopped:
            job.fail(self._stopped_error(job))
        except UserError as exc:
            job.fail(self._stopped_error(job) if job.stop.reason == "unloaded" else exc)
        except Exception as exc:
            if job.stop.reason == "unloaded":
                job.fail(self._stopped_error(job))
            else:
                logger.exception("engine of model '%s' failed on a request", self.name)
                why = str(exc) if isinstance(exc, EngineFault) else type(exc).__name__  # a child's account
                job.fail(EngineFault(f"model '{self.name}' failed on this request: {why}"))
        else:
            self._settle(job, result)
        finally:
            self._running.remove(job)
            self._slot_freed.set()

    def _answer_at_shutdown(self, job: Job[Any]) -> None:
        """Answer a job whose run the application cancelled (it did not stop in time at shutdown)."""
        job.stop.set("unloaded")
        job.fail(ModelUnloadedError(f"the server stopped while this request for '{self.name}' ran"))

    def _stopped_error(self, job: Job[Any]) -> Exception:
        if job.stop.reason == "unloaded":
            return ModelUnloadedError(f"model '{self.name}' was unloaded while this request ran")
        return RequestTimeoutError(f"request for model '{self.name}' was stopped: {job.stop.reason}")


def _engine_concurrency(engine: Engine) -> int:
    """How many requests the engine serves at once (``concurrency`` on batching engines)."""
    concurrency = getattr(engine, "concurrency", 1)
    return concurrency if isinstance(concurrency, int) and concurrency > 1 else 1


async def _wait(job: Job[Any], on_progress: ProgressSink | None, interval: float) -> None:
    """Wait for the job; meanwhile forward streamed text every ``interval`` seconds.

    The first text is forwarded as soon as it arrives (the streaming thread wakes this task), so
    coalescing never delays the first token: time to first token is what a reader notices.
    """
    if on_progress is None:
        await job.done.wait()
        return
    news = anyio.Event()
    nudge = _thread_safe_setter(news)
    job.nudge_on_news(nudge)  # before the first await: the job cannot have started yet
    first_look = interval if nudge is not None else _FIRST_TEXT_POLL
    try:
        sent_any = False
        while not job.done.is_set():
            with anyio.move_on_after(interval if sent_any else first_look):
                await (job.done if sent_any else news).wait()
            text, pieces = job.take_text()
            if text:
                await on_progress(text, pieces)
                sent_any = True
    finally:
        job.nudge_on_news(None)


def _thread_safe_setter(event: anyio.Event) -> Callable[[], None] | None:
    """A callable any thread may call to set ``event`` on the running event loop; ``None`` off
    asyncio (where the waiter polls instead)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio
        return None

    def set_soon() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(event.set)

    return set_soon
